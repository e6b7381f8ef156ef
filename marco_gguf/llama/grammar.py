"""JSON-schema -> GBNF, through llama-cpp-python's port of llama.cpp's json_schema_to_grammar (llama_grammar.py)."""

from __future__ import annotations


def schema_converter():
    """A fresh SchemaConverter with the options json_schema_to_gbnf uses: no remote $refs, no newlines in
    patterns' dots."""
    from llama_cpp.llama_grammar import SchemaConverter

    return SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def json_gbnf() -> str:
    """llama.cpp's grammar for any JSON value (grammars/json.gbnf)."""
    from llama_cpp.llama_grammar import JSON_GBNF

    return JSON_GBNF
