"""Lesson 06 hidden graders: rotary position embeddings (RoPE)."""

TITLE = "Position encodings: RoPE"
MODULES = ("rope",)  # the only student files copied into the sandbox
LAB_MODULES = ("lab_experiment",)  # the lab's entry point: copied for notebook autograding and reruns only
