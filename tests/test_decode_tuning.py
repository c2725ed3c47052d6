"""Decoding settings chosen on validation at the end of training, stored with the model, used by default."""
import json

import pytest

from attnlab.cli import main
from attnlab.metrics.bleu import corpus_scores
from attnlab.pipelines import decode_tuning
from attnlab.tasks import TaskSpec, load_corpus
from attnlab.translate import DecodeConfig, Translator


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "dates"
    assert main(["train", "--task", "dates", "--out", str(out), "--n-train", "2000", "--max-steps", "60",
                 "--preset", "tiny", "--no-progress", "--set", "eval_every=60", "--set", "eval_bleu_sentences=40",
                 "--set", "warmup_steps=30", "--set", "max_tokens=1500", "--set", "decode_tuning_sentences=100"]) == 0  # 40: eval_bleu_sentences caps it
    return out


def test_training_stores_the_best_validation_setting(tuned_run):
    decode = json.loads((tuned_run / "config.json").read_text())["decode"]
    grid = decode["grid"]
    assert decode["chosen_on"] == "validation" and decode["sentences"] == 40
    # greedy, beam 4 at every penalty, and beam 8 at the best penalty when beam 4 led
    assert grid[0]["beam"] == 1 and [g["length_penalty"] for g in grid[1:5]] == list(decode_tuning.PENALTIES)
    assert all(g["beam"] == decode_tuning.BEAM for g in grid[1:5]) and len(grid) in (5, 6)
    best = max(g["valid_bleu"] for g in grid)
    assert decode["valid_bleu"] == best
    first_best = next(g for g in grid if g["valid_bleu"] == best)  # ties: the cheaper, earlier setting
    assert (decode["beam"], decode["length_penalty"]) == (first_best["beam"], first_best["length_penalty"])


def test_the_scores_are_validation_bleu_of_those_settings(tuned_run):
    meta = json.loads((tuned_run / "config.json").read_text())
    spec = TaskSpec(**{k: v for k, v in meta["task"].items() if k in TaskSpec.__dataclass_fields__})
    valid = load_corpus(spec).valid[:40]
    tr = Translator.load(tuned_run)
    for g in meta["decode"]["grid"][:2]:
        hyps = tr.translate([s for s, _ in valid], DecodeConfig(beam=g["beam"], length_penalty=g["length_penalty"]))
        assert round(corpus_scores(hyps, [t for _, t in valid])["bleu"], 2) == g["valid_bleu"]


def test_translate_uses_the_stored_setting_unless_told_otherwise(tuned_run, monkeypatch):
    meta = json.loads((tuned_run / "config.json").read_text())
    meta["decode"].update(beam=3, length_penalty=1.5)  # a setting no default would give
    (tuned_run / "config.json").write_text(json.dumps(meta))
    tr = Translator.load(tuned_run)
    resolved = tr.resolve(DecodeConfig())
    assert (resolved.beam, resolved.length_penalty) == (3, 1.5)
    explicit = tr.resolve(DecodeConfig(beam=1, length_penalty=0.6))
    assert (explicit.beam, explicit.length_penalty) == (1, 0.6)
    seen = []
    import attnlab.translate

    real = attnlab.translate.beam_search

    def spy(*args, **kwargs):
        seen.append((kwargs["beam_size"], kwargs["length_penalty_alpha"]))
        return real(*args, **kwargs)

    monkeypatch.setattr("attnlab.translate.beam_search", spy)
    assert main(["translate", "--model", str(tuned_run), "--text", "May 1, 2020"]) == 0
    assert seen == [(3, 1.5)]


def test_nothing_to_tune_on_leaves_the_run_alone(tuned_run):
    before = (tuned_run / "config.json").read_text()
    assert decode_tuning.tune_decoding(tuned_run, [], []) is None
    assert (tuned_run / "config.json").read_text() == before


@pytest.mark.parametrize("scores, chosen", [
    # greedy, beam 4 at 0.6 / 1.0 / 1.5 / 2.0, then beam 8 at the best penalty
    ([10, 12, 15, 11, 9, 14], (4, 1.0)),   # beam 4 leads; beam 8 at 1.0 is worse
    ([10, 12, 15, 11, 9, 16], (8, 1.0)),   # beam 8 at the best penalty wins
    ([20, 12, 15, 11, 9], (1, 0.6)),       # greedy leads: no beam 8 tried
    ([10, 10, 10, 10, 10], (1, 0.6)),      # all equal: the cheapest, greedy
])
def test_the_best_validation_score_is_chosen(tuned_run, monkeypatch, scores, chosen):
    # scores by call order, so the choice itself is tested whatever the tiny model translates
    calls = iter(scores)
    monkeypatch.setattr(decode_tuning, "corpus_scores", lambda hyps, refs: {"bleu": float(next(calls))})
    decode = decode_tuning.tune_decoding(tuned_run, ["May 1, 2020"] * 3, ["1. Mai 2020"] * 3, sentences=3)
    assert (decode["beam"], decode["length_penalty"]) == chosen
    assert decode["valid_bleu"] == max(scores) and len(decode["grid"]) == len(scores)
    assert json.loads((tuned_run / "config.json").read_text())["decode"] == decode
