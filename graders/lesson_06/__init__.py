"""Lesson 06 hidden graders: rotary position embeddings (RoPE). Declared in lesson.toml."""
