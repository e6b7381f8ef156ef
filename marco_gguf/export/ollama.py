"""`export ollama`: a Modelfile for a GGUF, so `ollama create` gets Marco's chat format, stops and defaults.

Before 0.30 Ollama adopts a GGUF's chat template only when its Jinja is close to one Ollama knows,
which Qwen3's is not, so the Modelfile carries an explicit Go TEMPLATE (see templates.py) and the
stop strings. Everything else is read from the GGUF: sampling defaults (general.sampling.*, present
when the checkpoint's generation_config.json had them) and the license.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from marco_gguf.arch.qwen3moe import CHAT_TEMPLATE_KEY, DEFAULT_CTX, END_OF_TURN
from marco_gguf.arch.sampling import gguf_sampling
from marco_gguf.base.errors import ExportError
from marco_gguf.base.files import check_writable, make_folders, remove_folders, write_text_atomic
from marco_gguf.export.templates import go_template_for
from marco_gguf.gguf_io.reader import read_header
from marco_gguf.version import __version__

END_OF_CHATML_TURN, EOS = END_OF_TURN
STOPS = (END_OF_CHATML_TURN, "<|im_start|>", EOS)  # <|im_start|>: a new turn, which the model should never write
NUM_CTX = DEFAULT_CTX  # Marco's SFT context; Ollama's default is shorter and silently truncates long chats

# The model's sampling settings (arch/sampling.py reads them from general.sampling.*, as chat and serve do), by
# Sampling field -> Ollama PARAMETER (docs/modelfile.md); penalty_last_n has no Sampling field but an Ollama
# parameter. The other keys (sampling.sequence, xtc_*) have none; Ollama ignores mirostat* since 0.12.
SAMPLING_PARAMETERS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repeat_penalty": "repeat_penalty",
}
REPEAT_LAST_N = (gguf.Keys.General.SAMPLING_PENALTY_LAST_N, "repeat_last_n")

# Ollama's model name rules (types/model/name.go): [namespace/]model[:tag], parts start with a letter,
# digit or underscore; model and tag may also hold '.', '-', '_'; at most 80 characters each.
OLLAMA_NAME = re.compile(
    r"(?:[A-Za-z0-9_][A-Za-z0-9_-]{0,79}/)?[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,79})?"
)


@dataclass(frozen=True)
class OllamaExport:
    """A written Modelfile and the command that registers it with Ollama."""

    modelfile: Path
    gguf: Path
    name: str
    command: str
    template_format: str
    tools: bool
    parameters: tuple[tuple[str, str], ...]  # (PARAMETER name, value) in file order
    license: str | None
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "modelfile": str(self.modelfile),
            "gguf": str(self.gguf),
            "name": self.name,
            "command": self.command,
            "template_format": self.template_format,
            "tools": self.tools,
            "parameters": [list(p) for p in self.parameters],
            "license": self.license,
            "notes": list(self.notes),
        }


def _number(v: Any) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6g}"  # GGUF floats are float32: 0.7 reads 0.699999988


def default_model_name(gguf_path: Path) -> str:
    """`Marco-Mini-Instruct-Q4_K_M.gguf` -> `marco-mini-instruct-q4_k_m`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", gguf_path.stem).strip("-.").lower() or "marco"


def _license(fields: dict[str, Any]) -> str | None:
    parts = [fields.get(k) for k in ("general.license", "general.license.name", "general.license.link")]
    text = "\n".join(str(p) for p in parts if p)
    return text or None


def _from_line(gguf_path: Path, outdir: Path) -> str:
    rel = os.path.relpath(gguf_path.resolve(), outdir.resolve())  # Ollama resolves FROM against the Modelfile's folder
    return rel if rel.startswith("..") else f"./{rel}"


def modelfile_text(
    *, from_path: str, template: str, parameters: tuple[tuple[str, str], ...], license: str | None, header: str
) -> str:
    """A Modelfile in Ollama's syntax; TEMPLATE and LICENSE as triple-quoted multi-line values."""
    for what, text in (("TEMPLATE", template), ("LICENSE", license or "")):
        if '"""' in text:
            raise ExportError(f'the {what} contains """, which a Modelfile cannot quote')
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"FROM {from_path}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER {k} "{v}"' if k == "stop" else f"PARAMETER {k} {v}" for k, v in parameters]
    if license:
        lines.append(f'LICENSE """{license}"""')
    return "\n".join(lines) + "\n"


def export_ollama(
    gguf: str | Path, *, outdir: str | Path | None = None, name: str | None = None, force: bool = False
) -> OllamaExport:
    """Write `<outdir>/Modelfile` (default: beside the GGUF) for `ollama create NAME -f <outdir>/Modelfile`."""

    gguf_path = Path(gguf)
    fields = read_header(gguf_path).fields
    name = name or default_model_name(gguf_path)
    if not OLLAMA_NAME.fullmatch(name):
        raise ExportError(
            f"{name!r} is not a valid Ollama model name",
            "use letters, digits, '_', '-', '.', optionally namespace/ and :tag, e.g. marco-mini:q4_k_m",
        )
    folder = Path(outdir) if outdir is not None else gguf_path.parent
    modelfile = folder / "Modelfile"
    if modelfile.exists() and not force:
        raise ExportError(f"{modelfile} already exists", "pass --force to overwrite it")
    check_writable(modelfile, hint="choose another --outdir", error=ExportError)
    template = go_template_for(fields.get(CHAT_TEMPLATE_KEY))
    parameters = (
        tuple(("stop", s) for s in STOPS)
        + (("num_ctx", str(NUM_CTX)),)
        + tuple((SAMPLING_PARAMETERS[k], _number(v)) for k, v in gguf_sampling(fields).items())
        + tuple((REPEAT_LAST_N[1], _number(fields[key])) for key in REPEAT_LAST_N[:1] if key in fields)
    )
    license = _license(fields)
    command = f"ollama create {name} -f {shlex.quote(str(modelfile))}"
    header = (
        f"{gguf_path.name}: written by marco-gguf {__version__}\n"
        f"chat format: {template.format} (recognised from the GGUF's chat template)\n{command}"
    )
    text = modelfile_text(
        from_path=_from_line(gguf_path, folder),
        template=template.text,
        parameters=parameters,
        license=license,
        header=header,
    )
    made: list[Path] = []
    try:
        made = make_folders(folder)
        write_text_atomic(modelfile, text)
    except OSError as e:  # after the check above: the disk filled up, or the folder changed meanwhile
        remove_folders(made)
        raise ExportError(f"{modelfile}: cannot write it ({e.strerror or e})", "choose another --outdir") from None
    return OllamaExport(
        modelfile, gguf_path, name, command, template.format, template.tools, parameters, license, template.notes
    )
