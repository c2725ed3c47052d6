"""Data: corpora, Multi30k, generated tasks, subword tokenizers, token-count batching.

Place in the layering: data; imports only from decoding and the parts below it (tests/test_layering.py).
"""
from attnlab.data.batching import Batch, TokenBatchSampler, collate, encode_pairs
from attnlab.data.corpora import ParallelCorpus, read_lines, read_parallel, read_tsv
from attnlab.data.generated import make_generated_corpus
from attnlab.data.multi30k import load_multi30k
from attnlab.data.tokenizer import SubwordTokenizer, TokenizerPair

__all__ = ["Batch", "TokenBatchSampler", "collate", "encode_pairs", "ParallelCorpus", "read_lines", "read_parallel",
           "read_tsv", "make_generated_corpus", "load_multi30k", "SubwordTokenizer", "TokenizerPair"]
