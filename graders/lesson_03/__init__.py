"""Lesson 03 hidden graders: scaled dot-product attention and the causal mask. Declared in lesson.toml."""
