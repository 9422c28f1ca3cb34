"""Lesson 13: Supervised fine-tuning."""
