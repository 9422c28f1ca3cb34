"""Lesson 17 hidden graders: retrieval-augmented generation. Declared in lesson.toml."""
