"""Lesson 13 hidden graders: supervised fine-tuning. Declared in lesson.toml."""
