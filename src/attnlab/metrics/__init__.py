"""attnlab.metrics"""
