"""Lesson 04 hidden graders: multi-head attention and the Pre-LN Transformer block. Declared in lesson.toml."""
