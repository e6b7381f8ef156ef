"""Quantization: presets, importance matrices (computed and read), llama-quantize's imatrix rules."""
