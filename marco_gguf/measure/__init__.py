"""Measuring a GGUF: speed (bench), quality (perplexity, KL divergence) and faithfulness to its checkpoint (verify)."""
