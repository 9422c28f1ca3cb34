"""Lesson 11: Prompting, in-context learning, long context."""
