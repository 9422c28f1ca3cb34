"""Lesson 02 hidden graders: cross-entropy, perplexity, embeddings, the bigram LM and sampling. Declared in lesson.toml."""
