"""Lesson 10: Mixture of Experts and scaling."""
