"""Lesson 17: retrieval-augmented generation."""
