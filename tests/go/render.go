// Renders Ollama Modelfile TEMPLATEs with Go's text/template the way Ollama's server does
// (template/template.go in github.com/ollama/ollama): messages are collated (consecutive messages of
// one role merged, tool messages kept apart), every system message is joined into .System, the
// template gets System/Messages/Tools/Response, missing keys are zero, and `json` is defined as
// Ollama defines it. Standard library only, so `go run render.go` needs no network.
//
// stdin:  [{"template": "...", "messages": [...], "tools": [...]}, ...]  (Ollama's /api/chat shapes)
// stdout: ["rendering", ...]  or exit 1 with the template error on stderr.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

// Arguments keeps the caller's key order, as Ollama's ToolCallFunctionArguments (an ordered map) does.
type Arguments struct{ raw json.RawMessage }

func (a *Arguments) UnmarshalJSON(b []byte) error {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return err
	}
	a.raw = buf.Bytes()
	return nil
}

func (a Arguments) MarshalJSON() ([]byte, error) {
	if a.raw == nil {
		return []byte("{}"), nil
	}
	return a.raw, nil
}

func (a *Arguments) String() string {
	b, _ := json.Marshal(a)
	return string(b)
}

type ToolCallFunction struct {
	Index     int       `json:"index"`
	Name      string    `json:"name"`
	Arguments Arguments `json:"arguments"`
}

type ToolCall struct {
	Function ToolCallFunction `json:"function"`
}

type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	ToolName  string     `json:"tool_name,omitempty"`
}

type ToolFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Parameters  json.RawMessage `json:"parameters"`
}

type Tool struct {
	Type     string       `json:"type"`
	Function ToolFunction `json:"function"`
}

type Case struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
	Tools    []Tool    `json:"tools"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
}

// collate mirrors Ollama: system contents joined by blank lines; same-role runs merged except tool.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func render(c Case) (string, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(c.Template)
	if err != nil {
		return "", err
	}
	system, messages := collate(c.Messages)
	var tools []Tool
	if len(c.Tools) > 0 {
		tools = c.Tools
	}
	var b bytes.Buffer
	err = tmpl.Execute(&b, map[string]any{
		"System": system, "Messages": messages, "Tools": tools, "Response": "", "Think": false, "IsThinkSet": false,
	})
	return b.String(), err
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(1)
	}
	out := make([]string, 0, len(cases))
	for i, c := range cases {
		s, err := render(c)
		if err != nil {
			fmt.Fprintf(os.Stderr, "case %d: %v\n", i, err)
			os.Exit(1)
		}
		out = append(out, s)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
