"""Lesson 16 hidden graders: reasoning RL (GRPO). Declared in lesson.toml."""
