"""Random-weight Marco-shaped checkpoints and their tokenizer files, for the demo, tests and benchmarks."""
