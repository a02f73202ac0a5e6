"""Feedback: ratings, preferences, corrections and verifiable outcomes; tasks; interactions."""
