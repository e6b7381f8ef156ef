"""`python -m marco_gguf` = the `marco-gguf` command."""

from .cli.app import main

main()
