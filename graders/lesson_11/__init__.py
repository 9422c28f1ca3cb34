"""Lesson 11 hidden graders: prompting, in-context learning, long context. Declared in lesson.toml."""
