"""Lesson 04 hidden graders: multi-head attention and the Pre-LN Transformer block."""

TITLE = "Multi-head attention and the Pre-LN block"
MODULES = ("block",)  # the only student files copied into the sandbox
LAB_MODULES = ("lab_experiment",)  # the lab's entry point: copied for notebook autograding and reruns only
