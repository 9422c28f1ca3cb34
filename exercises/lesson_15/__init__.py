"""Lesson 15: Preference tuning (DPO and reward models)."""
