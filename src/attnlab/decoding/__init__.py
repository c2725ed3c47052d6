"""attnlab.decoding"""
