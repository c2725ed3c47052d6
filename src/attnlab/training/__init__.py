"""Training as in the paper (section 5): Adam(0.9, 0.98, 1e-9), warm-up, label smoothing, dropout.

Place in the layering: training; imports only from data and the parts below it (tests/test_layering.py).
"""
