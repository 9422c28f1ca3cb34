"""Lesson 08: decoding."""
