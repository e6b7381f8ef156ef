"""The qwen3moe architecture as data (the one table of tensor kinds) and Marco's facts: chat format, context, sampling defaults."""
