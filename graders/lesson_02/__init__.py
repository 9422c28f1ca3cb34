"""Lesson 02 hidden graders: cross-entropy, perplexity, embeddings, the bigram LM and sampling."""

TITLE = "Embeddings and language modelling"
MODULES = ("language_model",)  # the only student files copied into the sandbox
