"""Lesson 10 hidden graders: Mixture of Experts and scaling. Declared in lesson.toml."""
