"""Data: corpora, Multi30k, generated tasks, subword tokenizers, token-count batching."""
from attnlab.data.batching import Batch, TokenBatchSampler, collate, encode_pairs
from attnlab.data.corpora import ParallelCorpus, read_lines, read_parallel, read_tsv
from attnlab.data.generated import make_generated_corpus
from attnlab.data.multi30k import load_multi30k
from attnlab.data.tokenizer import SubwordTokenizer, TokenizerPair

__all__ = ["Batch", "TokenBatchSampler", "collate", "encode_pairs", "ParallelCorpus", "read_lines", "read_parallel",
           "read_tsv", "make_generated_corpus", "load_multi30k", "SubwordTokenizer", "TokenizerPair"]
