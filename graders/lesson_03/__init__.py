"""Lesson 03 hidden graders: scaled dot-product attention and the causal mask."""

TITLE = "Attention"
MODULES = ("attention",)  # the only student files copied into the sandbox
LAB_MODULES = ("lab_experiment",)  # the lab's entry point: copied for notebook autograding and reruns only
