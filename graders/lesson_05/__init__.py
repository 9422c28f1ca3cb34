"""Lesson 05 hidden graders: GPTMini (forward, loss, generate, micro overfit)."""

TITLE = "GPTMini"
MODULES = ("gpt", "blocks")  # the only student files copied into the sandbox (gpt.py imports blocks.py)
LAB_MODULES = ("lab_experiment",)  # the lab's entry point: copied for notebook autograding and reruns only
