"""Lesson 16: Reasoning RL (GRPO)."""
