"""Ollama Modelfiles: the exact file, and a TEMPLATE that Go's text/template renders like the GGUF's Jinja.

The Jinja side is transformers' apply_chat_template with the template read back from the GGUF; the
Go side is tests/go/render.go, which executes the Modelfile's TEMPLATE as Ollama's server does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoints import Spec
from model_files import card, variant

from marco_gguf import __version__, convert
from marco_gguf.base.errors import ExportError, GGUFFileError
from marco_gguf.export import export_ollama, go_template_for
from marco_gguf.export.templates import GO_CHATML, GO_QWEN3_CHATML_TOOLS, QWEN3_CHATML
from marco_gguf.gguf_io.reader import read_header

GO_HARNESS = Path(__file__).parent / "go" / "render.go"
QWEN3 = Spec(vocab="qwen3")
PLAIN_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
needs_go = pytest.mark.skipif(
    shutil.which("go") is None,
    reason="Go is not installed, so the TEMPLATE cannot be rendered (.ci/run installs golang-go)",
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city <as text>",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}


def call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


SYSTEM = {"role": "system", "content": "You are Marco, a concise assistant."}
CONVERSATIONS = [  # (reason, messages in transformers' shape, tools)
    (
        "system message and several turns",
        [
            SYSTEM,
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello. How can I help?"},
            {"role": "user", "content": "Name three rivers."},
            {"role": "assistant", "content": "Nile, Amazon, Yangtze."},
            {"role": "user", "content": "And two lakes?"},
        ],
        (),
    ),
    ("no system message", [{"role": "user", "content": "Bonjour !"}], ()),
    (
        "multi-line, non-Latin and template-like text passes through",
        [
            SYSTEM,
            {"role": "user", "content": "第一行\n  {{ .System }} {% raw %} <|im_end|>?\n\nالسطر الثالث"},
            {"role": "assistant", "content": "```\ncode\n```"},
            {"role": "user", "content": "😀"},
        ],
        (),
    ),
    (
        "ends with an assistant message: a prefill Ollama continues",
        [SYSTEM, {"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two,"}],
        (),
    ),
    (
        "parallel tool calls, their responses, the answer, a new question",
        [
            SYSTEM,
            {"role": "user", "content": "Weather in Paris and the time in Oslo?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [call("get_weather", city="Paris", unit="C"), call("get_time", tz="Europe/Oslo")],
            },
            {"role": "tool", "content": "18 C, sunny"},
            {"role": "tool", "content": "14:05"},
            {"role": "assistant", "content": "18 C in Paris; 14:05 in Oslo."},
            {"role": "user", "content": "Thanks"},
        ],
        (WEATHER, TIME),
    ),
    (
        "text before a tool call, no system message, ending on a tool response",
        [
            {"role": "user", "content": "Rome?"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [call("get_weather", city="Rome")]},
            {"role": "tool", "content": "25 C"},
        ],
        (WEATHER,),
    ),
]


def ollama_messages(messages: list[dict]) -> list[dict]:
    """transformers' message shape -> Ollama's /api/chat shape (tool calls without the type wrapper)."""
    out = []
    for m in messages:
        m = dict(m)
        if "tool_calls" in m:
            m["tool_calls"] = [{"function": c["function"]} for c in m["tool_calls"]]
        out.append(m)
    return out


def go_render(template: str, cases: list[tuple[list[dict], tuple]]) -> list[str]:
    payload = [{"template": template, "messages": ollama_messages(m), "tools": list(t)} for m, t in cases]
    proc = subprocess.run(
        ["go", "run", str(GO_HARNESS)], input=json.dumps(payload), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def jinja_render(folder: Path, template: str, messages: list[dict], tools: tuple) -> str:
    """transformers' rendering; a conversation ending with the assistant is continued, as Ollama does."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    prefill = messages[-1]["role"] == "assistant"
    text = tok.apply_chat_template(
        messages, tools=list(tools) or None, chat_template=template, tokenize=False, add_generation_prompt=not prefill
    )
    return text.removesuffix("<|im_end|>\n") if prefill else text


def canonical_json(text: str) -> str:
    """Lines that are JSON objects (tool definitions, tool calls), re-serialised one way: Ollama prints
    them with Go's compact json.Marshal, transformers' tojson with spaces after ':' and ','."""

    def canon(line: str) -> str:
        try:
            return json.dumps(json.loads(line), sort_keys=True) if line.startswith("{") else line
        except json.JSONDecodeError:
            return line

    return "\n".join(canon(line) for line in text.split("\n"))


def template_of(modelfile: Path) -> str:
    text = modelfile.read_text()
    start = text.index('TEMPLATE """') + len('TEMPLATE """')
    return text[start : text.index('"""\n', start)]


def linked_copy(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    os.link(path, folder / path.name)
    return folder / path.name


@pytest.fixture(scope="module")
def qwen3_export(converted, tmp_path_factory):
    return export_ollama(linked_copy(converted(QWEN3, "q8_0").path, tmp_path_factory.mktemp("ollama")))


def test_modelfile_for_the_qwen3_fixture(qwen3_export):
    m = qwen3_export.modelfile
    assert m.read_text() == (
        f"# Marco-Test-Instruct-Q8_0.gguf: written by marco-gguf {__version__}\n"
        "# chat format: Qwen3 ChatML with tool calls (recognised from the GGUF's chat template)\n"
        f"# ollama create marco-test-instruct-q8_0 -f {m}\n"
        "FROM ./Marco-Test-Instruct-Q8_0.gguf\n"
        f'TEMPLATE """{GO_QWEN3_CHATML_TOOLS}"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "<|im_start|>"\n'
        'PARAMETER stop "<|endoftext|>"\n'
        "PARAMETER num_ctx 8192\n"
    )  # no sampling defaults in its generation_config, no license in a card
    assert qwen3_export.command == f"ollama create marco-test-instruct-q8_0 -f {m}"


@needs_go
def test_go_template_renders_like_the_ggufs_jinja(qwen3_export, checkpoint):
    gguf_template = read_header(qwen3_export.gguf).fields["tokenizer.chat_template"]
    go = go_render(template_of(qwen3_export.modelfile), [(m, t) for _, m, t in CONVERSATIONS])
    for (reason, messages, tools), got in zip(CONVERSATIONS, go):
        want = jinja_render(checkpoint(QWEN3), gguf_template, messages, tools)
        if tools:  # equal up to JSON spacing, and the JSON lines are really there
            assert canonical_json(got) == canonical_json(want), reason
            assert got.count("<tool_call>\n{") == want.count("<tool_call>\n{") >= 1, reason
        else:
            assert got == want, reason


@needs_go
def test_plain_chatml_template_gets_the_plain_go_template(checkpoint, tmp_path):
    folder = variant(checkpoint(Spec()), tmp_path / "Plain-Chat", chat_template=PLAIN_CHATML)
    result = export_ollama(convert(folder, preset="f16", outdir=tmp_path, threads=2).path)
    assert (template_of(result.modelfile), result.tools, result.notes) == (GO_CHATML, False, ())
    chats = [(m, t) for _, m, t in CONVERSATIONS if not t]
    for (messages, _), got in zip(chats, go_render(GO_CHATML, chats)):
        assert got == jinja_render(folder, PLAIN_CHATML, messages, ())


def test_sampling_defaults_and_license_come_from_the_gguf(checkpoint, tmp_path):
    folder = variant(
        checkpoint(Spec()),
        tmp_path / "Marco-Sampled",
        readme=card(license="apache-2.0"),
        generation={"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05},
    )
    result = export_ollama(convert(folder, preset="f16", outdir=tmp_path, threads=2).path)
    assert result.modelfile.read_text().endswith(
        "PARAMETER num_ctx 8192\n"
        "PARAMETER temperature 0.7\n"  # float32 in the GGUF, written as the checkpoint wrote it
        "PARAMETER top_k 20\n"
        "PARAMETER top_p 0.8\n"  # repetition_penalty: gguf-py reads no such key, so neither do we
        'LICENSE """apache-2.0"""\n'
    )


def test_from_is_relative_to_the_modelfile(qwen3_export, tmp_path):
    result = export_ollama(qwen3_export.gguf, outdir=tmp_path / "ollama" / "marco", name="marco:q8")
    from_path = next(line for line in result.modelfile.read_text().splitlines() if line.startswith("FROM "))[5:]
    assert (
        from_path.startswith("../") and (result.modelfile.parent / from_path).resolve() == qwen3_export.gguf.resolve()
    )


def test_cli_prints_the_ollama_create_command(qwen3_export, tmp_path):
    outdir = tmp_path / "m"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "marco_gguf",
            "export",
            "ollama",
            str(qwen3_export.gguf),
            "--outdir",
            str(outdir),
            "--name",
            "marco-test",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"ollama create marco-test -f {outdir / 'Modelfile'}"
    assert (outdir / "Modelfile").is_file()


ERRORS = [  # (reason, keywords, what to prepare, error type, fragments of the message)
    (
        "a name Ollama rejects",
        {"name": "marco mini"},
        None,
        ExportError,
        ["'marco mini' is not a valid Ollama model name"],
    ),
    ("an existing Modelfile is kept", {}, "modelfile", ExportError, ["Modelfile already exists", "--force"]),
    ("not a GGUF file", {}, "not-gguf", GGUFFileError, ["not a GGUF file"]),
]


@pytest.mark.parametrize("reason,kwargs,prepare,error,fragments", ERRORS, ids=[e[0] for e in ERRORS])
def test_export_refusals(reason, kwargs, prepare, error, fragments, qwen3_export, tmp_path):
    gguf = qwen3_export.gguf
    if prepare == "modelfile":
        (tmp_path / "Modelfile").write_text("FROM mine\n")
    if prepare == "not-gguf":
        gguf = tmp_path / "x.gguf"
        gguf.write_text("hello")
    with pytest.raises(error) as e:
        export_ollama(gguf, outdir=tmp_path, **kwargs)
    for fragment in fragments:
        assert fragment in str(e.value)
    if prepare == "modelfile":
        assert (tmp_path / "Modelfile").read_text() == "FROM mine\n"


LLAMA3 = (
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + "
    "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are Qwen.<|im_end|>\n' }}{% endif %}"
    + PLAIN_CHATML
)
TEMPLATES = [  # (reason, Jinja chat template, recognised format and tool support, or the error's fragment)
    ("Qwen3's non-thinking ChatML with tools", QWEN3_CHATML, ("Qwen3 ChatML with tool calls", True)),
    ("plain ChatML without tools", PLAIN_CHATML, ("ChatML", False)),
    (
        "ChatML whose tool format is not Qwen3's: no tools, with a note",
        QWEN3_CHATML.replace("<tool_call>", "<function_call>"),
        ("ChatML", False),
    ),
    ("Llama 3's format", LLAMA3, "is not Qwen3's ChatML: for a conversation with system message and several turns"),
    ("a default system prompt", DEFAULT_SYSTEM, "is not Qwen3's ChatML: for a conversation with no system message"),
    ("no template at all", None, "the GGUF has no chat template"),
]


@pytest.mark.parametrize("reason,jinja,expected", TEMPLATES, ids=[t[0] for t in TEMPLATES])
def test_which_go_template(reason, jinja, expected):
    if isinstance(expected, str):
        with pytest.raises(ExportError, match=expected):
            go_template_for(jinja)
        return
    t = go_template_for(jinja)
    assert (t.format, t.tools) == expected
    assert bool(t.notes) == ("function_call" in jinja)
