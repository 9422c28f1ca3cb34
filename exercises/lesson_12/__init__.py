"""Lesson 12: Evaluation and error analysis."""
