"""Greedy and beam decoding, written once for every model family (see protocol.py).

Place in the layering: decoding; imports only from models and the parts below it (tests/test_layering.py).
"""
from attnlab.decoding.beam import Hypothesis, beam_search
from attnlab.decoding.greedy import greedy
from attnlab.decoding.protocol import Decodable, DecoderState

__all__ = ["greedy", "beam_search", "Hypothesis", "Decodable", "DecoderState"]
