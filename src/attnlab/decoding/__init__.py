"""Greedy and beam decoding, written once for every model family (see protocol.py)."""
from attnlab.decoding.beam import Hypothesis, beam_search
from attnlab.decoding.greedy import greedy
from attnlab.decoding.protocol import Decodable, DecoderState

__all__ = ["greedy", "beam_search", "Hypothesis", "Decodable", "DecoderState"]
