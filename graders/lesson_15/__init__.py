"""Lesson 15 hidden graders: preference tuning (DPO and reward models). Declared in lesson.toml."""
