"""Typed reading of the JSON files a checkpoint ships (config, shard index, tokenizer files).

Each getter checks one key's type and range and, when it is wrong, raises the caller's error class
with the file, the key, what was found and what was expected: a damaged or hand-edited file becomes
one clear line instead of a TypeError three calls later. JSON booleans are not integers here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from marco_gguf.base.errors import MarcoGGUFError

MISSING: Any = object()
_PLURAL = {int: "integers", str: "strings", dict: "objects", object: "values"}
INT32_MAX = 2**31 - 1  # GGUF stores these hyperparameters as uint32; llama.cpp reads them into int32
FLOAT32_MAX = 3.4028234663852886e38  # GGUF stores float hyperparameters as float32


def load_json_object(
    path: Path, error: type[MarcoGGUFError], missing_hint: str, missing: str = "not found"
) -> dict[str, Any]:
    """A JSON file whose top level must be an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {missing}", missing_hint) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})", f"download {path.name} again") from None
    if not isinstance(data, dict):
        raise error(f"{path}: top level is {json_kind(data)}, expected a JSON object", f"download {path.name} again")
    return data


def json_text(v: Any, limit: int = 60) -> str:
    """`v` as JSON text (what a client or file wrote: null, true, "a", {"k": 1}), cut to `limit` characters."""
    try:
        text = json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):  # not from JSON: a caller's own value
        text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_kind(v: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(v), type(v).__name__)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_Str = str  # inside Fields, `str` names its method (annotations there use this)


class Fields:
    """Typed access to one JSON object read from `path`; `where` prefixes keys (e.g. "model.")."""

    def __init__(
        self, data: dict[str, Any], path: Path, error: type[MarcoGGUFError], hint: str, where: str = ""
    ) -> None:
        self.data, self.path, self.error, self.hint, self.where = data, path, error, hint, where

    def fail(self, key: str, found: Any, expected: str) -> MarcoGGUFError:
        shown = repr(found) if len(repr(found)) <= 60 else repr(found)[:57] + "..."
        return self.error(
            f"{self.path}: {self.where}{key} is {shown} ({json_kind(found)}), expected {expected}", self.hint
        )

    def _get(self, key: str, default: Any) -> Any:
        v = self.data.get(key, MISSING)
        if v is MISSING or v is None:
            if default is MISSING:
                raise self.error(f"{self.path}: {self.where}{key} is missing", self.hint)
            return default
        return v

    def int(self, key: str, *, lo: int = 0, hi: int = INT32_MAX, default: Any = MISSING) -> Any:
        v = self._get(key, default)
        if v is not default and not (is_int(v) and lo <= v <= hi):
            raise self.fail(key, v, f"an integer from {lo:,} to {hi:,}")
        return v

    def number(
        self, key: str, *, lo: float = 0.0, hi: float = FLOAT32_MAX, default: Any = MISSING, exclusive_lo: bool = True
    ) -> Any:
        v = self._get(key, default)
        if v is default:
            return v
        ok = (
            (is_int(v) or isinstance(v, float))
            and math.isfinite(v)
            and (v > lo if exclusive_lo else v >= lo)
            and v <= hi
        )
        if not ok:
            raise self.fail(key, v, f"a finite number {'above' if exclusive_lo else 'from'} {lo:g}" + f" up to {hi:g}")
        return float(v)

    def bool(self, key: str, *, default: Any = MISSING) -> Any:
        v = self._get(key, default)
        if v is not default and not isinstance(v, bool):
            raise self.fail(key, v, "true or false")
        return v

    def str(self, key: str, *, default: Any = MISSING) -> Any:
        v = self._get(key, default)
        if v is not default and not isinstance(v, str):
            raise self.fail(key, v, "a string")
        return v

    def obj(self, key: _Str, *, default: Any = MISSING) -> Any:
        v = self._get(key, default)
        if v is not default and not isinstance(v, dict):
            raise self.fail(key, v, "an object")
        return v

    def list(self, key: _Str, item: type, *, default: Any = MISSING) -> Any:
        v = self._get(key, default)
        if v is not default and not (isinstance(v, list) and all(_is(x, item) for x in v)):
            raise self.fail(key, v, f"a list of {_PLURAL[item]}")
        return v

    def sub(self, key: _Str) -> Fields:
        """The nested object at `key` (an empty one when absent)."""
        return Fields(self.obj(key, default={}), self.path, self.error, self.hint, f"{self.where}{key}.")


def _is(v: Any, item: type) -> bool:
    return is_int(v) if item is int else isinstance(v, item)
