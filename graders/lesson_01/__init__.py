"""Lesson 01 hidden graders: byte-level BPE (train, encode, decode)."""

TITLE = "Tokenization"
MODULES = ("bpe",)  # the only student file copied into the sandbox
