"""What every export writes besides the weights: the model card (README.md) and the tokenizer.

It records what the exported weights are (architecture, vocabulary, special ids), how they were
made (the `model_card` dict: data, training time, BLEU, command, anything else given) and how to
run them. Entries that were not given are written as "not recorded" rather than left out, so a
missing fact is visible.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from attnlab.config import TransformerConfig

# The facts every card asks for, in this order; other keys of `model_card` follow them.
CARD_FIELDS = (
    ("data", "Training data"),
    ("training_time", "Training time"),
    ("bleu", "BLEU"),
    ("command", "Training command"),
)


def _value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, sort_keys=True) + "`"
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text


def write_model_card(
    out_dir: str | Path,
    cfg: TransformerConfig,
    fmt: str,
    special_ids: dict[str, int],
    usage: str,
    model_card: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write out_dir/README.md and return its path."""
    card = dict(model_card or {})
    title = card.pop("title", None) or f"attnlab Transformer ({fmt} export)"
    front = ["---", "library_name: " + ("transformers" if fmt == "hf" else "onnx"), "tags:",
             "- translation", "- attnlab", "- " + ("marian" if fmt == "hf" else "onnx")]
    if "license" in card:
        front.append(f"license: {card.pop('license')}")
    front.append("---")

    lines = front + ["", f"# {title}", ""]
    if "description" in card:
        lines += [str(card.pop("description")), ""]
    lines += [
        "An encoder-decoder Transformer (Vaswani et al. 2017, \"Attention Is All You Need\") trained with "
        f"attnlab and exported with `attnlab export --format {fmt}`.", "",
        "## Training", "", "| | |", "|---|---|",
    ]
    for key, label in CARD_FIELDS:
        lines.append(f"| {label} | {_value(card.pop(key)) if key in card else 'not recorded'} |")
    for key, value in card.items():
        lines.append(f"| {key} | {_value(value)} |")

    enc, dec = cfg.encoder_layers, cfg.decoder_layers
    lines += [
        "", "## Architecture", "", "| | |", "|---|---|",
        f"| layers (encoder / decoder) | {enc} / {dec} |",
        f"| d_model / heads / d_ff | {cfg.d_model} / {cfg.n_heads} / {cfg.d_ff} |",
        f"| activation | {cfg.activation} |",
        f"| normalisation | {'pre-norm' if cfg.norm_first else 'post-norm (as in the paper)'} |",
        f"| positions | {cfg.positional} |",
        f"| vocabulary (source / target) | {cfg.src_vocab_size} / {cfg.tgt_vocab_size} |",
        f"| shared source/target embeddings | {cfg.share_embeddings} |",
        f"| output projection tied to target embeddings | {cfg.tie_output} |",
        f"| embeddings scaled by sqrt(d_model) | {cfg.scale_embedding} |",
        "| special ids | " + ", ".join(f"{k}={v}" for k, v in special_ids.items()) + " |",
        "", "## Usage", "", usage.strip(), "",
    ]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## attnlab configuration", "", "```json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True),
              "```", ""]
    path = Path(out_dir) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def save_tokenizer(tokenizer: Any, out_dir: Path, max_len: int) -> list[str]:
    """`tokenizer.save(out_dir)` (attnlab.data.TokenizerPair: tokenizer.json when joint, else
    src_tokenizer.json and tgt_tokenizer.json); returns the names of the files it wrote. A joint
    tokenizer.json also gets a tokenizer_config.json, so transformers' AutoTokenizer can load it."""
    if not hasattr(tokenizer, "save"):
        raise TypeError(f"tokenizer must have a save(directory) method, got {type(tokenizer).__name__}")
    out_dir = Path(out_dir)
    before = set(out_dir.iterdir())
    tokenizer.save(out_dir)
    if (out_dir / "tokenizer.json").is_file() and not (out_dir / "tokenizer_config.json").exists():
        (out_dir / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "model_max_length": max_len,
        }, indent=2) + "\n")
    known = {"tokenizer.json", "src_tokenizer.json", "tgt_tokenizer.json", "tokenizer_config.json"}
    return sorted(p.name for p in out_dir.iterdir() if p.name in known or p not in before)
