"""Fuzzing the user-facing surfaces with hypothesis: translation of any text, the tokenizer round trip,
and the command line with random arguments (a grammar of the real flags with random values).

ATTNLAB_FUZZ_SCALE=N multiplies every example budget (the default runs in well under a minute);
`pytest tests/test_fuzz.py --hypothesis-show-statistics` reports how many cases ran.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import unicodedata
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from attnlab import Transformer, TransformerConfig
from attnlab.cli import main
from attnlab.data.generated import make_generated_corpus
from attnlab.data.tokenizer import SubwordTokenizer, TokenizerPair
from attnlab.run_dir import write_run_config
from attnlab.training.checkpoint import save_checkpoint, save_weights
from attnlab.translate import DecodeConfig, Translator

SCALE = int(os.environ.get("ATTNLAB_FUZZ_SCALE", "1"))


def budget(n: int):
    return settings(max_examples=n * SCALE, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run directory with a randomly initialised tiny Transformer (untrained output is the worst case:
    it never emits EOS, so every decoding runs to its length limit)."""
    out = tmp_path_factory.mktemp("fuzz") / "run"
    corpus = make_generated_corpus("dates", 300, 0, 0, seed=1)
    toks = TokenizerPair.train(corpus.train, vocab_size=150, joint=True)
    toks.save(out)
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=toks.src.vocab_size, tgt_vocab_size=toks.tgt.vocab_size, d_model=16,
                            n_heads=2, n_layers=1, d_ff=32, dropout=0.0, pad_id=0, share_embeddings=True)
    save_weights(Transformer(cfg), out / "model.safetensors")
    task = {"task": "dates", "src_lang": "en", "tgt_lang": "de", "n_train": 40, "n_valid": 8, "n_test": 8, "seed": 1}
    write_run_config(out, "transformer", cfg.to_dict(), task, {"max_steps": 1, "eval_bleu_sentences": 4},
                     {"kind": "subword", "joint": True})
    save_checkpoint(out, 1, Transformer(cfg), None, None, {"epoch": 0, "batch_in_epoch": 0})
    (out.parent / "a_file.txt").write_text("May 3, 1999\n\nJune 1, 2001\n")
    return out


@pytest.fixture(scope="module")
def translator(run) -> Translator:
    return Translator.load(run)


# ---- translation ---------------------------------------------------------------------------------
ANY_CHAR = st.characters(codec=None, exclude_categories=())  # every code point, lone surrogates included
LINES = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.text(" \t\r\n\u00a0\u2028\u3000", max_size=6),  # blank in many ways
    st.builds(lambda s, n: (s + " ") * n, st.text(ANY_CHAR, min_size=1, max_size=8), st.integers(50, 400)),  # long
    st.sampled_from(["", "May 3, 1999", "Saturday, March 14, 2026", "</s> <pad> <unk> <s>", "\u202e\u200b\ufeff"]),
)
DECODING = st.builds(
    lambda beam, n_best, a, b, src, amp: DecodeConfig(beam=beam, n_best=min(n_best, beam), max_len_a=a, max_len_b=b,
                                                      max_src_len=src, amp=amp),
    st.integers(1, 3), st.integers(1, 3), st.sampled_from([0.0, 0.1, 0.25]), st.integers(0, 4), st.integers(2, 80),
    st.sampled_from(["none", "bf16"]))


@budget(100)
@given(lines=st.lists(LINES, max_size=5), cfg=DECODING)
def test_translate_any_text_gives_one_line_per_input(translator, lines, cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long inputs warn that they were truncated
        n_best = translator.translate_n_best(lines, cfg)
        best = translator.translate(lines, cfg)
    assert len(best) == len(n_best) == len(lines)
    for text, out, hyps in zip(lines, best, n_best):
        assert isinstance(out, str) and out == hyps[0]
        assert len(hyps) <= cfg.n_best
        assert len(out.splitlines()) <= 1 and "\n" not in out and "\r" not in out  # one line per input
        if not text.strip():
            assert out == ""


# ---- tokenizer round trip ------------------------------------------------------------------------
TEXTS = [s for pair in make_generated_corpus("dates", 1000, 0, 0, seed=1).train for s in pair]
SEEN = sorted(set("".join(TEXTS)) - {" "})


@pytest.fixture(scope="module")
def tok() -> SubwordTokenizer:
    return SubwordTokenizer.train(TEXTS, vocab_size=300)


@budget(150)
@given(text=st.text(st.sampled_from(SEEN + [" "]), max_size=40))
def test_round_trip_is_exact_on_known_characters(tok, text):
    # spacing inside the text survives (Metaspace); only the ends are stripped
    assert tok.decode(tok.encode(text)) == text.strip()


@budget(150)
@given(text=st.text(ANY_CHAR, max_size=40))
def test_any_text_encodes_and_decodes_to_a_subset_of_itself(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    back = tok.decode(ids)
    clean = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert set(back) <= set(unicodedata.normalize("NFKC", clean)) | {" "}  # nothing invented, unknowns dropped
    assert tok.decode(tok.encode(back)) == back.strip()  # what comes back is known text: it round-trips


# ---- the command line ----------------------------------------------------------------------------
INTS = st.sampled_from(["-1", "0", "1", "2", "3", "7", "300", "1e3", "x", "", "99999999999999999999"])
FLOATS = st.sampled_from(["-1", "0", "0.5", "1.5", "nan", "inf", "-inf", "1e308", "abc", ""])
WORDS = st.one_of(st.text(ANY_CHAR, max_size=12), st.sampled_from(["May 3, 1999", "", " ", "--", "-x", "last", "mean"]))
DEVICES = st.sampled_from(["cpu", "cuda", "cuda:1", "meta", "mps", "xyz", "", "cpu:0"])


def flag(name, values):
    return st.tuples(st.just(name), values).map(list)


def command(name, required, optional, positional=None):
    """argv: the subcommand, its required flags (each sometimes left out), optional flags in random order."""
    def build(req, opt, pos, drop):
        argv = [name]
        for i, pair in enumerate(req):
            if i != drop:
                argv += pair
        for pair in opt:
            argv += pair
        return argv + pos
    opts = st.lists(st.one_of(*optional), max_size=5) if optional else st.just([])
    return st.builds(build, st.tuples(*required), opts, positional if positional is not None else st.just([]),
                     st.integers(-1, len(required) + 3))


def cli_grammar(run: Path, tmp: Path):
    models = st.sampled_from([str(run), str(run / "checkpoints" / "step-0000001"), str(tmp / "none"),
                              str(tmp / "a_file.txt"), str(tmp), ""])
    paths = st.sampled_from([str(tmp / "new"), str(tmp / "a_file.txt"), str(tmp / "dir" / "x.png"), str(tmp / "x.png"),
                             str(tmp), ""])
    decode = [flag("--beam", INTS), flag("--length-penalty", FLOATS), flag("--max-len-a", FLOATS),
              flag("--max-len-b", INTS), flag("--max-src-len", INTS), flag("--n-best", INTS),
              flag("--batch-tokens", INTS), flag("--amp", st.sampled_from(["none", "bf16", "fp16", ""])),
              flag("--device", DEVICES)]
    settings_ = st.sampled_from(["d_model", "n_heads", "n_layers", "dropout", "lr_scale", "warmup_steps", "max_tokens",
                                 "label_smoothing", "seed", "amp", "max_len", "share_embeddings", "model.d_ff", "bogus",
                                 "train.keep_last", "eval_every", "clip_norm", "accum_steps"])
    set_value = st.builds(lambda k, v: f"{k}={v}", settings_, st.one_of(INTS, FLOATS, st.sampled_from(["true", "no"])))
    train = command("train", [flag("--out", st.one_of(paths, st.just(str(run))))], [
        flag("--task", st.sampled_from(["copy", "reverse", "dates", "numbers", "files", "scenes", "captions", "nope"])),
        flag("--arch", st.sampled_from(["transformer", "rnn", "rnn-attn", "sat", "caption-transformer", "x"])),
        flag("--attention", st.sampled_from(["bahdanau", "luong-dot", "luong-general", "x"])),
        flag("--n-train", st.sampled_from(["-1", "0", "1", "5", "30", "x"])),
        flag("--vocab-size", st.sampled_from(["-3", "0", "1", "60", "x"])),
        flag("--preset", st.sampled_from(["test", "tiny", "x"])), flag("--max-steps", INTS),
        flag("--max-epochs", INTS), flag("--max-minutes", FLOATS), flag("--seed", INTS), flag("--set", set_value),
        flag("--max-value", INTS), flag("--src-lang", st.sampled_from(["en", "de", "fr", "xx", ""])),
        flag("--device", DEVICES), flag("--train-src", paths), flag("--train-tgt", paths), flag("--data-dir", paths),
        st.just(["--resume"]), st.just(["--separate-vocab"]), st.just(["--no-progress"]), st.just(["--help"])])
    translate = command("translate", [flag("--model", models)],
                        [flag("--text", WORDS), flag("--input", paths), st.just(["--bogus-flag"]), *decode])
    evaluate = command("evaluate", [flag("--model", models)], [
        flag("--split", st.sampled_from(["valid", "test", "x"])), flag("--limit", st.sampled_from(["-2", "0", "2", "x"])),
        flag("--src", paths), flag("--ref", paths), flag("--hyp-out", paths), st.just(["--json"]), *decode])
    attention = command("attention", [flag("--model", models), flag("--text", WORDS), flag("--out", paths)], [
        flag("--kind", st.sampled_from(["cross", "encoder", "decoder", "x"])), flag("--layer", WORDS),
        flag("--head", st.sampled_from(["0", "1", "2", "-1", "mean", "last", "x"])), flag("--beam", INTS),
        flag("--device", DEVICES)])
    caption = command("caption", [flag("--model", models)], [flag("--beam", INTS), flag("--max-len", INTS),
                                                             flag("--device", DEVICES)],
                      st.lists(paths, max_size=2))
    export = command("export", [flag("--model", models), flag("--format", st.sampled_from(["hf", "x"])),
                                flag("--out", paths)], [])
    serve = command("serve", [flag("--model", models)], [
        flag("--port", INTS), flag("--max-batch", INTS), flag("--threads", INTS), flag("--device", DEVICES),
        flag("--batch-wait-ms", FLOATS), flag("--max-beam", INTS), flag("--log-level", st.sampled_from(["info", "x"]))])
    nonsense = st.lists(WORDS, max_size=3)
    return st.one_of(train, translate, evaluate, attention, caption, export, serve, nonsense)


@contextlib.contextmanager
def working_dir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """main(argv) in an empty scratch directory: every path the grammar names is absolute, so anything
    that appears in `cwd` was written where the user did not ask (e.g. `--out ""` meaning ".")."""
    err, out = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()  # `serve --threads N` sets it for the process
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings(), \
            working_dir(cwd):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: --help (0) and usage errors (2)
            code = exit_.code if isinstance(exit_.code, int) else 1
    torch.set_num_threads(threads)
    return code, err.getvalue()


@budget(50)
@given(data=st.data())
def test_cli_exits_0_or_with_one_line_error(run, data):
    tmp = run.parent
    scratch = tmp / "cwd"
    scratch.mkdir(exist_ok=True)
    argv = data.draw(cli_grammar(run, tmp))
    # training itself and the server's loop are out of the fuzzer's budget; everything before them runs
    with mock.patch("attnlab.training.loop.Trainer.fit", lambda self, resume=False: {"steps": 0}), \
            mock.patch("uvicorn.run", lambda *a, **k: None), mock.patch("sys.stdin", io.StringIO("May 3, 1999\n")):
        code, err = run_cli(argv, scratch)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("attnlab: warning")
             and "it/s]" not in line]  # transformers' own progress bar when exporting
    name = argv[0] if argv and argv[0] in ("train", "translate", "evaluate", "attention", "caption", "export",
                                           "serve") else "(no command)"
    event(f"{name}: exit {code}")  # --hypothesis-show-statistics shows the mix
    assert "Traceback" not in err
    assert code in (0, 2), f"{argv!r} -> exit {code}: {err[-500:]}"  # 1 would be an internal error (a bug)
    stray = sorted(p.name for p in scratch.iterdir())
    for p in scratch.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert not stray, f"{argv!r} wrote {stray} into the working directory"
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("attnlab") and ": error: " in lines[0], (argv, err)
