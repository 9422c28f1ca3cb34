"""Lesson 09 hidden graders: training systems. Declared in lesson.toml."""
