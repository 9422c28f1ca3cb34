"""Lesson 01 hidden graders: byte-level BPE (train, encode, decode). Declared in lesson.toml."""
