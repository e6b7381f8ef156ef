"""The `marco-gguf` command line: a thin Typer layer over the library (the only place Rich is used)."""
