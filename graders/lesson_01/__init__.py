"""Lesson 01 hidden graders: byte-level BPE (train, encode, decode)."""

TITLE = "Tokenization"
MODULES = ("bpe",)  # the only student file copied into the sandbox
LAB_MODULES = ("lab_experiment",)  # the lab's entry point: copied for notebook autograding and reruns only
