"""The only code that talks to llama.cpp (llama_cpp and ggml through ctypes): loading, the engine, sampling, the graph observer."""
