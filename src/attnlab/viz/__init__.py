"""Attention pictures."""
