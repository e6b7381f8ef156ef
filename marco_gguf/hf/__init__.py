"""Hugging Face checkpoints: config normalisation, safetensors, the hub, tokenizer files."""
