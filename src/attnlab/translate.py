"""Translate text with a trained model: batching by length, greedy or beam search, detokenisation.

Used by the CLI (`translate`, `evaluate`), validation during training, and the HTTP service.
Empty lines translate to empty lines; over-long inputs are truncated with one warning; unknown
characters map to <unk> in the tokenizer and never crash.

Place in the layering: applications; imports only from training and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from attnlab.decoding import beam_search, greedy
from attnlab.models.registry import supports
from attnlab.run_dir import LoadedRun, load_run


@dataclass
class DecodeConfig:
    # None: the model's default (Translator.resolve): a Marian model's generation settings, else the setting
    # chosen on validation when attnlab trained it (config.json "decode"), else greedy and GNMT alpha 0.6
    beam: int | None = None
    length_penalty: float | None = None
    max_len_a: float = 1.5  # max output length = a * source length + b
    max_len_b: int = 10
    max_src_len: int = 256  # longer inputs are truncated (with a warning)
    batch_tokens: int = 6000  # source tokens per decoding batch
    n_best: int = 1
    amp: str = "auto"  # "bf16" speeds up CPU decoding where supported; "auto" = off for decoding

    def validate(self) -> "DecodeConfig":
        """Raise a one-line ValueError naming the setting out of range (as its command-line flag)."""
        def bad(name: str, need: str) -> ValueError:
            return ValueError(f"--{name.replace('_', '-')} must be {need}, got {getattr(self, name)!r}")

        for name, low in (("beam", 1), ("max_len_b", 0), ("max_src_len", 2), ("batch_tokens", 1), ("n_best", 1)):
            value = getattr(self, name)
            if name == "beam" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise bad(name, f">= {low}")
        if self.beam is not None and self.n_best > self.beam:
            raise ValueError(f"--n-best must be between 1 and --beam ({self.beam}), got {self.n_best}")
        for name in ("length_penalty", "max_len_a"):
            value = getattr(self, name)
            if name == "length_penalty" and value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise bad(name, "a finite number >= 0")
        if self.amp not in ("auto", "none", "bf16"):
            raise bad("amp", "auto, none or bf16")
        return self


def source_ids(tokenizers: Any, text: str) -> list[int]:
    """The source side as the model saw it in training: subwords followed by EOS."""
    return tokenizers.src.encode(text) + [tokenizers.src.eos_id]


class Translator:
    def __init__(self, model: nn.Module, tokenizers: Any, device: str | torch.device = "cpu", meta: dict | None = None):
        self.model = model.to(device).eval()
        self.tokenizers = tokenizers
        self.device = torch.device(device)
        self.meta = meta or {}
        # how transformers decodes a Marian model (attnlab.export.marian_import.generation_defaults); {} otherwise
        self.generation: dict[str, Any] = self.meta.get("generation") or {}
        # an attnlab run's beam and length penalty, chosen on validation (attnlab.pipelines.decode_tuning)
        tuned = self.meta.get("decode") or {}
        self.defaults = {"beam": int(self.generation.get("num_beams", tuned.get("beam", 1))),
                         "length_penalty": float(self.generation.get("length_penalty", tuned.get("length_penalty", 0.6)))}

    def resolve(self, cfg: DecodeConfig) -> DecodeConfig:
        """`cfg` with the model's defaults where it leaves them open (None), validated."""
        beam = cfg.beam if cfg.beam is not None else self.defaults["beam"]
        alpha = cfg.length_penalty if cfg.length_penalty is not None else self.defaults["length_penalty"]
        if cfg.beam is None and cfg.n_best > beam:
            beam = cfg.n_best
        return dataclasses.replace(cfg, beam=beam, length_penalty=alpha).validate()

    def _decode_options(self) -> dict[str, Any]:
        """Marian's generation rules for greedy / beam search (pad banned, forced EOS, length ** alpha)."""
        gen = self.generation
        if not gen:
            return {}
        return {"banned": gen.get("banned_ids", ()), "force_eos": bool(gen.get("forced_eos"))}

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Translator":
        run: LoadedRun = load_run(path, device)
        if supports(run.meta.get("arch", "transformer"), "captioning"):  # its source is an image, not text
            raise ValueError(f"{path} holds an image captioner ({run.meta.get('arch')!r}), not a translator; "
                             "use 'attnlab caption'")
        return cls(run.model, run.tokenizers, device, run.meta)

    def quantize_int8(self) -> "Translator":
        """Replace the model by its dynamically int8-quantised copy (CPU inference; attnlab.quantize)."""
        from attnlab.quantize import quantize_int8

        self.model = quantize_int8(self.model)
        return self

    @property
    def bos_id(self) -> int:
        return self.tokenizers.tgt.bos_id

    @property
    def eos_id(self) -> int:
        return self.tokenizers.tgt.eos_id

    def encode_sources(self, sentences: Sequence[str], max_src_len: int) -> list[list[int]]:
        encoded, truncated = [], 0
        for text in sentences:
            ids = source_ids(self.tokenizers, text)
            if len(ids) > max_src_len:
                ids = ids[: max_src_len - 1] + [self.tokenizers.src.eos_id]
                truncated += 1
            encoded.append(ids)
        if truncated:
            warnings.warn(f"{truncated} input(s) longer than {max_src_len} tokens were truncated", stacklevel=3)
        return encoded

    def _batches(self, lengths: list[int], batch_tokens: int) -> list[list[int]]:
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        batches, current, longest = [], [], 0
        for i in order:
            longest_if = max(longest, lengths[i])
            if current and longest_if * (len(current) + 1) > batch_tokens:
                batches.append(current)
                current, longest_if = [], lengths[i]
            current.append(i)
            longest = longest_if
        if current:
            batches.append(current)
        return batches

    @torch.no_grad()
    def translate_ids(self, sources: list[list[int]], cfg: DecodeConfig) -> list[list[list[int]]]:
        """Token-id sources -> for each, up to n_best token-id outputs (no BOS/EOS/pad)."""
        cfg = self.resolve(cfg)
        pad = self.model.pad_id
        results: list[list[list[int]]] = [[] for _ in sources]
        for batch in self._batches([len(s) for s in sources], cfg.batch_tokens):
            width = max(len(sources[i]) for i in batch)
            src = torch.full((len(batch), width), pad, dtype=torch.long)
            for row, i in enumerate(batch):
                src[row, : len(sources[i])] = torch.tensor(sources[i])
            src = src.to(self.device)
            max_len = max(1, int(cfg.max_len_a * width + cfg.max_len_b))
            if self.generation:  # transformers' max_length counts the decoder start token
                max_len = max(1, min(max_len, int(self.generation["max_length"]) - 1))
            use_bf16 = cfg.amp == "bf16"
            options = self._decode_options()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if cfg.beam <= 1:
                    out = greedy(self.model, src, max_len=max_len, bos_id=self.bos_id, eos_id=self.eos_id, **options)
                    for row, i in enumerate(batch):
                        results[i] = [self._strip(out[row].tolist())]
                else:
                    if self.generation:
                        options.update(length_norm="power", early_stopping=self.generation["early_stopping"],
                                       renormalize=self.generation["renormalize"])
                    hyps = beam_search(self.model, src, beam_size=cfg.beam, max_len=max_len, bos_id=self.bos_id,
                                       eos_id=self.eos_id, length_penalty_alpha=cfg.length_penalty,
                                       n_best=cfg.n_best, **options)
                    for row, i in enumerate(batch):
                        results[i] = [self._strip(h.tokens) for h in hyps[row]]
        return results

    def _strip(self, tokens: list[int]) -> list[int]:
        out = []
        for t in tokens:
            if t == self.eos_id:
                break
            if t != self.model.pad_id:
                out.append(t)
        return out

    def translate(self, sentences: Sequence[str], cfg: DecodeConfig | None = None, **overrides: Any) -> list[str]:
        """Translate each sentence (best hypothesis). Empty or blank lines give empty lines."""
        return [n[0] if n else "" for n in self.translate_n_best(sentences, cfg, **overrides)]

    def translate_n_best(self, sentences: Sequence[str], cfg: DecodeConfig | None = None, **overrides: Any) -> list[list[str]]:
        cfg = cfg or DecodeConfig()
        for key, value in overrides.items():
            setattr(cfg, key, value)
        cfg = self.resolve(cfg)
        out: list[list[str]] = [[""] for _ in sentences]
        real = [i for i, s in enumerate(sentences) if s.strip()]
        if not real:
            return out
        ids = self.encode_sources([sentences[i] for i in real], cfg.max_src_len)
        decoded = self.translate_ids(ids, cfg)
        for i, hyps in zip(real, decoded):
            out[i] = [self.tokenizers.tgt.decode(h) for h in hyps] or [""]
        return out
