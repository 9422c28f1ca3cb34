"""Lesson 18 hidden graders: agents and the capstone. Declared in lesson.toml."""
