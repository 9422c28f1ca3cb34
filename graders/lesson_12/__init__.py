"""Lesson 12 hidden graders: evaluation and error analysis. Declared in lesson.toml."""
