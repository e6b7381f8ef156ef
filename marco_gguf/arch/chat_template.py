"""The GGUF's own chat template (`tokenizer.chat_template`), rendered with jinja2 as transformers does.

transformers' `apply_chat_template` compiles the template in an immutable sandbox with
`trim_blocks`/`lstrip_blocks`, the `loopcontrols` extension, its own `tojson` (no HTML escaping),
`raise_exception` and `strftime_now`, and renders it with `messages`, `tools`, `documents`,
`add_generation_prompt` and the tokenizer's special tokens. llama-cpp-python's Jinja2ChatFormatter
does the same; so does this module, so the prompt text (and hence the tokens) equal HF's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from marco_gguf.arch.qwen3moe import CHAT_TEMPLATE_KEY as TEMPLATE_KEY
from marco_gguf.arch.qwen3moe import CHATML as CHATML_TEMPLATE
from marco_gguf.base.errors import ChatError

CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "  # transformers' marker for continue_final_message


@lru_cache(maxsize=8)
def compile_template(source: str) -> Any:
    """`source` compiled as transformers compiles chat templates; a jinja2.TemplateError if it is not valid."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def render_template(
    source: str,
    messages: Sequence[dict],
    tools: Sequence[dict] | None = None,
    add_generation_prompt: bool = True,
    **special_tokens: str,
) -> str:
    """The prompt text `source` gives for `messages`, with the variables transformers passes (a
    jinja2.TemplateError when the template refuses the conversation)."""
    return compile_template(source).render(
        messages=[dict(m) for m in messages],
        tools=list(tools) if tools else None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
        **special_tokens,
    )


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may refer to."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", from_gguf: bool = True) -> None:
        self.source, self.from_gguf = source, from_gguf
        self.special_tokens = {"bos_token": bos_token, "eos_token": eos_token}
        import jinja2

        try:
            compile_template(source)  # fail early on a broken template
        except jinja2.TemplateError as e:
            raise ChatError(f"the GGUF's chat template is not valid Jinja ({e})") from None

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], token_text) -> ChatTemplate:
        """From llama-cpp-python's `Llama.metadata`; ChatML (Marco's format) when the GGUF has no template."""
        specials = {
            name: token_text(int(metadata[f"tokenizer.ggml.{name}_id"]))
            for name in ("bos_token", "eos_token")
            if f"tokenizer.ggml.{name}_id" in metadata
        }
        source = metadata.get(TEMPLATE_KEY)
        return cls(source or CHATML_TEMPLATE, from_gguf=bool(source), **specials)

    def render(
        self,
        messages: Sequence[dict],
        *,
        tools: Sequence[dict] | None = None,
        add_generation_prompt: bool = True,
        continue_final: bool = False,
    ) -> str:
        """The prompt text; `tools` (OpenAI function definitions) go to the template as transformers passes them.
        `continue_final`: the prompt ends inside the last message, right after its text (transformers'
        `continue_final_message`, found the way it finds it: a marker appended to that text)."""
        import jinja2

        if continue_final:
            messages = [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + CONTINUE_TAG}]
        try:
            text = render_template(
                self.source, messages, tools, add_generation_prompt and not continue_final, **self.special_tokens
            )
        except jinja2.TemplateError as e:
            raise ChatError(f"the chat template refused this conversation ({e})") from None
        except (TypeError, ValueError, LookupError, AttributeError) as e:  # a template tripping on a value it got
            raise ChatError(f"the chat template failed on this conversation ({type(e).__name__}: {e})") from None
        if not continue_final:
            return text
        at = text.rfind(CONTINUE_TAG.strip())
        if at < 0:
            raise ChatError("the chat template leaves out the last message, so it cannot be continued")
        # a template that strips the message's text trimmed the marker's space too: trim as transformers does
        return text[:at] if text[at : at + len(CONTINUE_TAG)] == CONTINUE_TAG else text[:at].rstrip()
