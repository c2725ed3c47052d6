"""Batched beam search on the decoding protocol.

Every sentence keeps `beam_size` live hypotheses as rows of one batch. At each step the 2K best
extensions are scored; those ending in EOS among the top K are set aside as finished, the best K
others continue. A sentence is done once it has K finished hypotheses (fairseq's rule) and its rows
are dropped from the batch, so finished sentences cost nothing (pruning). Scores are normalised by
the GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016); alpha = 0 is raw log-prob.

`length_norm="power"` follows transformers' beam search instead (how Marian / opus-mt models are run):
lp(Y) = |Y| ** alpha, a sentence keeps its K best finished hypotheses (a better one replaces the worst),
and it is done once its best live hypothesis, normalised at the current length, cannot beat the worst
finished one (early_stopping=False; with `early_stopping`, as soon as it has K).

Place in the layering: decoding; imports only from models and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from attnlab.decoding.protocol import Decodable, batch_size_of, eval_mode


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens, EOS included when the hypothesis ended with one
    score: float  # log-prob / length penalty
    log_prob: float


def top_tokens(logits: Tensor, width: int, block: int = 64) -> tuple[Tensor, Tensor]:
    """logits.topk(width, dim=-1) for (R, V), through the maxima of blocks of 64 on the CPU: the `width`
    largest values of a row lie in the `width` blocks with the largest maxima (each value outside them
    has `width` block maxima, distinct values, at least as large), so only those blocks are searched.
    The same values; among equal values the order of indices may differ from torch.topk."""
    rows, vocab = logits.shape
    n_blocks = vocab // block
    if logits.device.type != "cpu" or vocab % block or n_blocks <= 2 * width:
        return logits.topk(width, dim=-1)
    blocks = logits.view(rows, n_blocks, block)
    chosen = blocks.amax(dim=-1).topk(width, dim=-1).indices  # (R, width) block numbers
    values = blocks.gather(1, chosen[:, :, None].expand(rows, width, block)).view(rows, width * block)
    best, where = values.topk(width, dim=-1)
    index = chosen.gather(1, where // block) * block + where % block
    return best, index


def logsumexp_(logits: Tensor) -> Tensor:
    """(R, V) -> (R, 1) log-sum-exp, computed in place (the logits are overwritten): no second
    R x V tensor, whose fresh memory costs page faults at every step of a large beam."""
    top = logits.amax(dim=-1, keepdim=True)
    return top + logits.sub_(top).exp_().sum(dim=-1, keepdim=True).log_()


def length_penalty(length: int, alpha: float, kind: str = "gnmt") -> float:
    return float(length) ** alpha if kind == "power" else ((5.0 + length) / 6.0) ** alpha


def _add_finished(hyps: list[Hypothesis], hyp: Hypothesis, k: int, keep_best: bool) -> None:
    """The first K (fairseq), or the K best so far (transformers: a better one replaces the worst)."""
    if len(hyps) < k:
        hyps.append(hyp)
    elif keep_best:
        worst = min(range(k), key=lambda i: hyps[i].score)
        if hyp.score > hyps[worst].score:
            hyps[worst] = hyp


def _done(hyps: list[Hypothesis], k: int, best_alive: float, length: int, alpha: float, kind: str,
          early_stopping: bool) -> bool:
    if len(hyps) < k:
        return False
    if kind != "power" or early_stopping:
        return True
    return best_alive / length_penalty(length, alpha, kind) <= min(h.score for h in hyps)


@torch.no_grad()
def beam_search(
    model: Decodable,
    src: Tensor,
    beam_size: int = 4,
    max_len: int = 128,
    bos_id: int = 1,
    eos_id: int = 2,
    length_penalty_alpha: float = 0.6,
    n_best: int = 1,
    use_cache: bool = True,
    min_len: int = 0,
    banned: Sequence[int] = (),
    force_eos: bool = False,
    length_norm: str = "gnmt",
    early_stopping: bool = False,
    renormalize: bool = False,
) -> list[list[Hypothesis]]:
    """Decode src (B, S); for each sentence return its `n_best` hypotheses, best first.

    `banned` ids are never chosen (their probability stays in the softmax's sum unless `renormalize`, as
    transformers' logits processors do); with `force_eos` a hypothesis reaching max_len ends with EOS
    at log-prob 0 (forced_eos_token_id). `length_norm`: "gnmt" or "power" (see the module docstring)."""
    if length_norm not in ("gnmt", "power"):
        raise ValueError(f"length_norm must be 'gnmt' or 'power', got {length_norm!r}")
    if beam_size < 1 or not 1 <= n_best <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= n_best <= beam_size, got {beam_size}, {n_best}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    k = beam_size
    with eval_mode(model):
        b = batch_size_of(src)
        device = src.device if isinstance(src, Tensor) else None
        state = model.init_decode(src, max_len=max_len + 1, use_cache=use_cache)
        state.reorder(torch.arange(b, device=device).repeat_interleave(k))  # (B*K) rows
        tokens = torch.full((b * k, 1), bos_id, dtype=torch.long, device=device)
        scores = torch.zeros(b, k, device=device)  # cumulative log-probs of live hypotheses
        scores[:, 1:] = float("-inf")  # at first all beams are the same: expand only one
        active = torch.arange(b)  # original index of each live sentence
        finished: list[list[Hypothesis]] = [[] for _ in range(b)]

        for step in range(max_len):
            logits, state, _ = model.decode_step(tokens, state)
            logits = logits.float()  # (n*K, V)
            last = step == max_len - 1
            n, vocab = scores.size(0), logits.size(-1)
            if force_eos and last:  # every hypothesis ends here, with EOS at log-prob 0
                width = 1
                best_logits = logits.new_zeros(n * k, 1)
                best_tokens = torch.full((n * k, 1), eos_id, dtype=torch.long, device=logits.device)
                lse = 0.0
            else:
                masked = ([eos_id] if step < min_len else []) + list(banned)
                kept = logits[:, masked].clone() if masked else None
                if masked:
                    logits[:, masked] = float("-inf")
                # A sentence's 2K best extensions lie among each of its beams' 2K best tokens, so only those
                # are scored: (n*K, 2K) candidates instead of log-softmax and top-k over (n, K*V).
                width = min(2 * k, vocab)
                best_logits, best_tokens = top_tokens(logits, width)  # (n*K, width)
                if masked and not renormalize:  # they stay in the softmax's sum, out of the choice
                    logits[:, masked] = kept
                lse = logsumexp_(logits)  # log-prob = logit - lse; the logits are used up
            candidates = (scores.view(-1, 1) + (best_logits - lse)).view(n, k * width)
            top_scores, top_index = candidates.topk(min(2 * k, k * width), dim=1)  # (n, 2K)
            parent = torch.div(top_index, width, rounding_mode="floor")
            token = best_tokens.view(n, k * width).gather(1, top_index)

            # set aside finished hypotheses (EOS among the top K; at the last step, everything)
            ends = token[:, :k] == eos_id
            if last:
                ends = torch.ones_like(ends)
            if bool(ends.any()):
                length = step + 1
                lp = length_penalty(length, length_penalty_alpha, length_norm)
                rows, cols = ends.nonzero(as_tuple=True)
                prefix = tokens.view(n, k, -1)[:, :, 1:]
                for i, j in zip(rows.tolist(), cols.tolist()):
                    s = int(active[i])
                    if len(finished[s]) >= k and length_norm != "power":
                        continue
                    lp_score = float(top_scores[i, j])
                    if lp_score == float("-inf"):
                        continue
                    seq = prefix[i, parent[i, j]].tolist() + [int(token[i, j])]
                    _add_finished(finished[s], Hypothesis(seq, lp_score / lp, lp_score), k, length_norm == "power")
            if last:
                break

            # the K best extensions that do not end here continue
            alive_scores = top_scores.masked_fill(token == eos_id, float("-inf"))
            alive_scores, pick = alive_scores.topk(k, dim=1)  # (n, K)
            parent = parent.gather(1, pick)
            token = token.gather(1, pick)

            best_alive = alive_scores[:, 0].tolist()
            keep = torch.tensor([not _done(finished[int(s)], k, best_alive[i], step + 1, length_penalty_alpha,
                                           length_norm, early_stopping)
                                 for i, s in enumerate(active)], dtype=torch.bool)
            if not bool(keep.any()):
                break
            keep_dev = keep.to(device) if device is not None else keep
            kept = keep_dev.nonzero(as_tuple=True)[0]
            rows = (kept[:, None] * k + parent[kept]).reshape(-1)  # rows of the old batch to follow
            tokens = torch.cat([tokens.index_select(0, rows), token[kept].reshape(-1, 1)], dim=1)
            state.reorder(rows)
            scores = alive_scores[kept]
            active = active[keep]

        results = []
        for hyps in finished:
            hyps.sort(key=lambda h: h.score, reverse=True)
            results.append(hyps[:n_best])
        return results
