"""Lesson 07: efficient attention and the KV cache."""
