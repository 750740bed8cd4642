"""The built-in tiny world: a tiny Qwen2 model and a synthetic task it can learn in about a minute."""
