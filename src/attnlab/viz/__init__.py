"""Attention pictures.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
