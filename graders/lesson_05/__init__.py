"""Lesson 05 hidden graders: GPTMini (forward, loss, generate, micro overfit). Declared in lesson.toml."""
