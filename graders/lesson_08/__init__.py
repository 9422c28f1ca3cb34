"""Lesson 08 hidden graders: decoding. Declared in lesson.toml."""
