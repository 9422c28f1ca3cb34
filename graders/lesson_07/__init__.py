"""Lesson 07 hidden graders: efficient attention and the KV cache. Declared in lesson.toml."""
