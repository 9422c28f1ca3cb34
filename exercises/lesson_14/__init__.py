"""Lesson 14: LoRA and QLoRA."""
