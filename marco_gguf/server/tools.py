"""Tool calls and structured output: GBNF grammars for llama.cpp's grammar sampler, and Qwen3's
`<tool_call>{json}</tool_call>` output split into OpenAI `tool_calls`.

Qwen3's chat template tells the model to answer a call as `<tool_call>\\n{"name": ..., "arguments":
{...}}\\n</tool_call>` (one block per call). `tool_choice` "required" or a named function is enforced
by a grammar that only allows such blocks, with each tool's `parameters` schema converted to GBNF
by llama-cpp-python's port of llama.cpp's own json-schema-to-grammar converter; "auto" leaves the
model free and parses what it writes. `response_format` json_object / json_schema are grammars too.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from marco_gguf.base.errors import RequestError
from marco_gguf.llama.grammar import json_gbnf, schema_converter

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"\s*(\{.*\})\s*", re.DOTALL)


def _literal(text: str) -> str:
    """A GBNF string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _visit(converter, schema: dict, name: str, param: str) -> str:
    try:
        schema = converter.resolve_refs(schema, "request")
        return converter.visit(schema, name)
    except Exception as e:  # the converter raises whatever the schema trips (KeyError, ValueError, ...)
        raise RequestError(
            f"{param} cannot be turned into a grammar ({type(e).__name__}: {e})",
            "use a plain JSON schema (types, properties, enum, items, required)",
            param=param,
        ) from None


def tool_grammar(tools: list[dict], names: list[str], parallel: bool) -> str:
    """GBNF allowing only `<tool_call>` blocks calling one of `names` with arguments that match its
    `parameters`; several blocks (one per line) when `parallel`."""
    converter, calls = schema_converter(), []
    for i, tool in enumerate(tools):
        fn = tool["function"]
        if fn["name"] not in names:
            continue
        params = fn.get("parameters") or {"type": "object"}
        args = _visit(converter, params, f"tool{i}-arguments", f"tools[{i}].function.parameters")
        head = _literal(f'{OPEN}\n{{"name": "{fn["name"]}", "arguments": ')
        calls.append(converter._add_rule(f"tool{i}-call", f"{head} {args} {_literal('}' + chr(10) + CLOSE)}"))
    call = " | ".join(calls)
    root = f'({call}) ("\\n" ({call}))*' if parallel else call
    return f"root ::= {root}\n{converter.format_grammar()}"


def response_grammar(response_format: dict) -> str | None:
    """GBNF for `response_format` ({"type": "text" | "json_object" | "json_schema"}), None for text."""
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return json_gbnf()
    converter = schema_converter()
    _visit(converter, response_format["json_schema"]["schema"], "", "response_format.json_schema.schema")
    return converter.format_grammar()


def _parse_call(block: str) -> tuple[str, str] | None:
    """(name, arguments as a JSON string) from the inside of a `<tool_call>` block, or None if it is not one."""
    m = _BLOCK.fullmatch(block)
    try:
        call = json.loads(m.group(1)) if m else None
    except ValueError:
        return None
    if not (isinstance(call, dict) and isinstance(call.get("name"), str)):
        return None
    args = call.get("arguments", {})
    return call["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)


@dataclass
class ToolCallParser:
    """Generated text in, OpenAI deltas out: {"content": ...} for text, and per call first {"tool_calls":
    [{index, id, type, function: {name, arguments: ""}}]} then {"tool_calls": [{index, function: {arguments}}]},
    as OpenAI streams them. A block that is not a valid call stays text. Whitespace-only text between
    calls is dropped (Qwen3 puts a newline between blocks)."""

    calls: list[dict] = field(default_factory=list)
    _buf: str = ""
    _inside: bool = False
    _space: str = ""  # whitespace-only text held until real text follows

    def feed(self, piece: str) -> list[dict]:
        self._buf += piece
        out: list[dict] = []
        while True:
            if not self._inside:
                i = self._buf.find(OPEN)
                if i < 0:  # hold a tail that may be the start of <tool_call>
                    held = max(
                        (n for n in range(min(len(OPEN) - 1, len(self._buf)), 0, -1) if self._buf.endswith(OPEN[:n])),
                        default=0,
                    )
                    self._text(self._buf[: len(self._buf) - held], out)
                    self._buf = self._buf[len(self._buf) - held :]
                    return out
                self._text(self._buf[:i], out)
                self._buf, self._inside = self._buf[i + len(OPEN) :], True
            else:
                j = self._buf.find(CLOSE)
                if j < 0:
                    return out
                block, self._buf, self._inside = self._buf[:j], self._buf[j + len(CLOSE) :], False
                call = _parse_call(block)
                if call is None:
                    self._text(OPEN + block + CLOSE, out)
                else:
                    self._space = ""
                    out += self._call(*call)

    def close(self) -> list[dict]:
        """The rest: an unfinished block is text."""
        out: list[dict] = []
        self._text((OPEN if self._inside else "") + self._buf, out)
        self._buf, self._inside = "", False
        if self._space and not self.calls:
            out.append({"content": self._space})
        return out

    def _text(self, text: str, out: list[dict]) -> None:
        if not text:
            return
        if not text.strip():
            self._space += text
            return
        out.append({"content": self._space + text})
        self._space = ""

    def _call(self, name: str, arguments: str) -> list[dict]:
        index, call_id = len(self.calls), f"call_{secrets.token_hex(12)}"
        self.calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        return [
            {
                "tool_calls": [
                    {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                ]
            },
            {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]},
        ]


def split_reply(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """A whole reply's (content or None, tool_calls)."""
    parser = ToolCallParser()
    deltas = parser.feed(text) + parser.close()
    content = "".join(d.get("content", "") for d in deltas)
    if parser.calls:
        content = content.strip()
    return content or (None if parser.calls else ""), parser.calls
