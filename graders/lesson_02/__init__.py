"""Lesson 02 hidden graders: cross-entropy, perplexity, embeddings, the bigram LM and sampling."""

TITLE = "Embeddings and language modelling"
MODULES = ("language_model",)  # the only student files copied into the sandbox
LAB_MODULES = ("lab_experiment",)  # the lab's entry point: copied for notebook autograding and reruns only
