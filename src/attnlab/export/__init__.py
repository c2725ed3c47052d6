"""Export a trained attnlab Transformer for other runtimes; a model card is written with every export.

- Hugging Face: `export_marian(model, out_dir, tokenizer, model_card)` writes a directory that
  `transformers.MarianMTModel.from_pretrained` loads (same logits, same greedy output);
  `load_marian(out_dir)` reads it back into attnlab exactly, and so any published Marian (opus-mt)
  directory (attnlab.export.marian_import).
- ONNX: `export_onnx(model, out_dir)` writes encoder.onnx and decoder_step.onnx (with self-attention
  caches); `OnnxTranslator(out_dir).greedy(src, max_len, bos, eos)` decodes with onnxruntime alone.

Intended CLI (written elsewhere): `attnlab export --model RUN --format hf|onnx --out DIR`.
Both need the optional extra: `pip install 'attnlab[export]'`.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from attnlab.export.card import write_model_card
from attnlab.export.hf import MarianExportError, export_marian, marian_permutation
from attnlab.export.marian_import import load_marian, read_marian_special_ids
from attnlab.export.onnx import OnnxTranslator, export_onnx

__all__ = [
    "MarianExportError",
    "OnnxTranslator",
    "export_onnx",
    "export_marian",
    "load_marian",
    "marian_permutation",
    "read_marian_special_ids",
    "write_model_card",
]
