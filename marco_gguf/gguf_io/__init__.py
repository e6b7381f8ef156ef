"""GGUF files: the streaming writer, the strict header reader, metadata, what a file holds, and llama.cpp's pre-load checks."""
