"""The registry declares what each model family can do; commands ask it, and a request a family cannot
serve is one line (CLI) naming the model and what it cannot do."""
import pytest
import torch

from attnlab.cli import main
from attnlab.data.generated import dates_task
from attnlab.data.tokenizer import TokenizerPair
from attnlab.models.registry import (CAPABILITIES, UnsupportedError, architectures, build_model, register,
                                     require, supports)
from attnlab.models.rnn import RNNConfig
from attnlab.run_dir import write_run_config
from attnlab.training.checkpoint import save_weights

EXPECTED = {
    "transformer": {"translation", "attention_maps", "beam", "kv_cache", "export_hf", "export_onnx"},
    "rnn": {"translation", "beam", "kv_cache"},
    "rnn-attn": {"translation", "attention_maps", "beam", "kv_cache"},
    "sat": {"captioning", "attention_maps", "beam", "kv_cache"},
    "caption-transformer": {"captioning", "attention_maps", "beam", "kv_cache"},
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_each_family_declares_what_it_can_do(arch):
    assert arch in architectures()
    assert {c for c in CAPABILITIES if supports(arch, c)} == EXPECTED[arch]


def test_a_missing_capability_is_one_line_naming_the_model():
    require("rnn-attn", "attention_maps")  # no error
    with pytest.raises(UnsupportedError, match=r"^this model \(the RNN encoder-decoder with one fixed-length context "
                                               r"vector, which has no attention, arch 'rnn'\) cannot show attention maps$"):
        require("rnn", "attention_maps")
    with pytest.raises(ValueError, match="unknown capability 'teleport'"):
        supports("transformer", "teleport")
    with pytest.raises(ValueError, match="unknown capabilities \\['fly'\\]"):
        register("x-test", RNNConfig, lambda c: None, ("fly",))


@pytest.fixture(scope="module")
def rnn_run(tmp_path_factory):
    """An untrained fixed-context RNN run directory (no training needed to be refused)."""
    out = tmp_path_factory.mktemp("rnn_run")
    tok = TokenizerPair.train(dates_task(300, seed=0), vocab_size=120, joint=True)
    cfg = RNNConfig(tok.src.vocab_size, tok.tgt.vocab_size, d_embed=16, d_hidden=16, pad_id=tok.src.pad_id)
    torch.manual_seed(0)
    model = build_model("rnn", cfg)
    write_run_config(out, "rnn", cfg.to_dict(), {"task": "dates"}, {}, {"kind": "subword", "joint": True})
    save_weights(model, out / "model.safetensors")
    tok.save(out)
    return out


@pytest.mark.parametrize("argv, message", [
    (["attention", "--text", "1 May 2020", "--out", "{tmp}/a.png"], "cannot show attention maps"),
    (["export", "--format", "onnx", "--out", "{tmp}/onnx"], "cannot be exported to ONNX"),
    (["export", "--format", "hf", "--out", "{tmp}/hf"], "cannot be exported to Hugging Face Marian"),
    (["caption", "{tmp}/x.png"], "not an image captioner"),
])
def test_the_cli_refuses_what_the_family_cannot_do_in_one_line(rnn_run, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main([argv[0], "--model", str(rnn_run), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert main(["translate", "--model", str(rnn_run), "--text", "1 May 2020"]) == 0  # what it can do, it does
