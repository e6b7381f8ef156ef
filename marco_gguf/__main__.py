"""`python -m marco_gguf` = the `marco-gguf` command."""

from marco_gguf.cli.app import main

main()
