"""Lesson 14 hidden graders: LoRA and QLoRA. Declared in lesson.toml."""
