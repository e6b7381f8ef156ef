"""Chat templates: the GGUF's Jinja rendered as transformers renders it, and its Go equivalent for Ollama.

Ollama (before 0.30) does not run Jinja: a Modelfile needs a Go text/template. A Jinja template
cannot be translated in general, so this module carries hand-written Go templates for the chat
formats Marco uses and picks one by *behaviour*: the GGUF's Jinja must render a table of probe
conversations exactly as Qwen3's non-thinking ChatML does (tests/test_ollama.py proves, with a real
Go text/template, that each Go template renders those conversations exactly as the Jinja does).

Ollama's conventions, which the Go templates follow:
- `.System` is every system message joined (a Modelfile SYSTEM included) and goes first, as Qwen3's
  Jinja puts a leading system message first; `.Messages` still holds the system messages, skipped.
- A conversation ending with an assistant message is a prefill Ollama continues: no `<|im_end|>`
  after it (Jinja with add_generation_prompt=False ends that turn; otherwise identical).
- Tool definitions and tool-call arguments are printed with Ollama's `json` func (compact, Go's
  json.Marshal), where transformers' `tojson` puts a space after `:` and `,`: the JSON is equal,
  the whitespace is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from marco_gguf.arch.chat_template import render_template
from marco_gguf.arch.qwen3moe import CHATML as QWEN3_CHATML
from marco_gguf.base.errors import ExportError

# Qwen3 non-thinking ChatML with a system message and Qwen3's tool calling (<tools>, <tool_call>,
# <tool_response>), in Ollama's variables. Read top to bottom: system block, then one branch per role.
GO_QWEN3_CHATML_TOOLS = """\
{{- if .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}

{{ end }}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{{ json . }}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{{ else if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- $prev := "" }}
{{- range $i, $m := .Messages }}
{{- $rest := slice $.Messages $i }}
{{- $last := eq (len $rest) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}
{{- if .Content }}{{ with .ToolCalls }}
{{ end }}{{ end }}
{{- if .ToolCalls }}{{ range $j, $_ := .ToolCalls }}<tool_call>
{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}
</tool_call>{{ if gt (len (slice $m.ToolCalls $j)) 1 }}
{{ end }}{{ end }}{{ end }}
{{- if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}
{{- if ne $prev "tool" }}<|im_start|>user{{ end }}
<tool_response>
{{ .Content }}
</tool_response>
{{- if or $last (ne (index $rest 1).Role "tool") }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- $prev = .Role }}
{{- end }}"""

# Plain ChatML (no tool calling): every non-system message as <|im_start|>role\ncontent<|im_end|>.
GO_CHATML = """\
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}
{{- if or (not $last) (ne .Role "assistant") }}<|im_end|>
{{ end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _call(name: str, **arguments: Any) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


@dataclass(frozen=True)
class Probe:
    """A conversation the GGUF's Jinja must render exactly as Qwen3's ChatML does."""

    name: str
    messages: tuple[dict, ...]
    tools: tuple[dict, ...] = ()


# Conversations ending with a user or tool message, rendered with add_generation_prompt=True.
CHAT_PROBES = (
    Probe(
        "system message and several turns",
        (
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi. What do you need?"},
            {"role": "user", "content": "Two lines:\nthe second one."},
        ),
    ),
    Probe("no system message", ({"role": "user", "content": "Bonjour, ça va ?"},)),
)
TOOL_PROBES = (
    Probe(
        "tool calls and tool responses",
        (
            {"role": "system", "content": "Use tools when they help."},
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [_call("get_weather", city="Paris"), _call("get_weather", city="Oslo", unit="C")],
            },
            {"role": "tool", "content": "18 C, sunny"},
            {"role": "tool", "content": "4 C, snow"},
            {"role": "assistant", "content": "Paris 18 C, Oslo 4 C."},
            {"role": "user", "content": "Thanks"},
        ),
        (_WEATHER,),
    ),
    Probe(
        "tools without a system message",
        (
            {"role": "user", "content": "Weather in Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [_call("get_weather", city="Rome")]},
            {"role": "tool", "content": "25 C"},
        ),
        (_WEATHER,),
    ),
)


@dataclass(frozen=True)
class GoTemplate:
    """A Go text/template for Ollama and what it supports."""

    text: str
    format: str  # what the GGUF's Jinja was recognised as
    tools: bool
    notes: tuple[str, ...] = ()


def render_chat(
    template: str,
    messages: Sequence[dict],
    *,
    tools: Sequence[dict] = (),
    add_generation_prompt: bool = True,
    **special_tokens: str,
) -> str:
    """The prompt text a Jinja chat template gives, rendered the way transformers renders it."""
    import jinja2

    try:
        return render_template(
            template, messages, tools=tools, add_generation_prompt=add_generation_prompt, **special_tokens
        )
    except jinja2.TemplateError as e:
        raise ExportError(f"the chat template failed to render ({e})") from None


def _first_difference(template: str, probes: Sequence[Probe]) -> tuple[Probe, str, str] | None:
    for p in probes:
        got, want = (render_chat(t, p.messages, tools=p.tools) for t in (template, QWEN3_CHATML))
        if got != want:
            return p, got, want
    return None


def go_template_for(jinja_template: str | None) -> GoTemplate:
    """The Go template that renders like `jinja_template`, recognised by behaviour on the probes."""
    if not jinja_template:
        raise ExportError(
            "the GGUF has no chat template (tokenizer.chat_template)",
            "convert from a checkpoint whose tokenizer_config.json carries one",
        )
    differs = _first_difference(jinja_template, CHAT_PROBES)
    if differs is not None:
        p, got, want = differs
        raise ExportError(
            f"the GGUF's chat template is not Qwen3's ChatML: for a conversation with {p.name} it "
            f"renders {got[:120]!r}, ChatML gives {want[:120]!r}",
            "write the Modelfile's TEMPLATE by hand (Ollama >= 0.30 can use the embedded template)",
        )
    tool_difference = _first_difference(jinja_template, TOOL_PROBES)
    if tool_difference is None:
        return GoTemplate(GO_QWEN3_CHATML_TOOLS, "Qwen3 ChatML with tool calls", tools=True)
    notes = (
        ()
        if "tool" not in jinja_template
        else (
            f"the chat template's tool calling differs from Qwen3's ({tool_difference[0].name}): "
            "the Modelfile has no tool support",
        )
    )
    return GoTemplate(GO_CHATML, "ChatML", tools=False, notes=notes)
