"""Lesson 03 hidden graders: scaled dot-product attention and the causal mask."""

TITLE = "Attention"
MODULES = ("attention",)  # the only student files copied into the sandbox
