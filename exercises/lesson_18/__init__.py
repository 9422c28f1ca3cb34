"""Lesson 18: agents and the capstone."""
