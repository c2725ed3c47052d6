"""The benchmarks run end to end (tiny sizes) and report what they claim: every ratio and rate is the one its
measured times give. (That attnlab and HF Marian decode the same tokens: tests/export/test_generate_parity.py.)"""
import json

import pytest
import torch

from required import require_module

from attnlab.cli import main


def report(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{"):])


def test_train_benchmark_reports_ratios_and_mfu(capsys, tmp_path):
    path = tmp_path / "train.json"
    assert main(["bench", "train", "--size", "tiny", "--batches", "1", "--repeats", "1", "--batch-size", "8",
                 "--configs", "ref-fp32,attnlab-fp32", "--skip-memory", "--device", "cpu", "--out", str(path)]) == 0
    result = report(capsys)
    assert json.loads(path.read_text()) == result
    assert set(result["results"]) == {"ref-fp32", "attnlab-fp32"}
    ref, ours = result["results"]["ref-fp32"], result["results"]["attnlab-fp32"]
    tokens = result["real_target_tokens_per_round"]
    for r in (ref, ours):  # each rate from its median round; the MFU from the same FLOPs and the measured peak
        assert r["seconds_per_round"] == sorted(r["rounds"])[len(r["rounds"]) // 2]
        # the JSON rounds times to 1e-4 s and rates to 0.1: the rate lies between those the rounding allows
        sec = r["seconds_per_round"]
        assert tokens / (sec + 5e-5) - 0.05 <= r["tokens_per_s"] <= tokens / (sec - 5e-5) + 0.05
        peak = result["matmul_peak_tflops"]["fp32"]  # each of the three reported to 4 digits
        assert r["mfu"] == pytest.approx(r["tflops"] / peak, rel=1e-2, abs=1e-4 + 1e-4 / peak)
    assert result["ratios"]["attnlab-fp32_vs_ref-fp32"] == pytest.approx(ours["tokens_per_s"] / ref["tokens_per_s"],
                                                                         abs=2e-3)
    assert result["real_target_tokens_per_round"] < result["padded_target_tokens_per_round"]
    assert {"cpu", "threads", "torch", "bf16_matmul"} <= set(result["machine"])
    assert result["device"] == {"device": "cpu"}


def test_train_benchmark_names_its_configurations():
    from attnlab.bench.common import SIZES
    from attnlab.bench.train import make_step

    for bad in ("ref", "ref-fp16", "attnlab-fp32-jit", "tf-fp32"):
        with pytest.raises(ValueError, match="unknown configuration"):
            make_step(bad, SIZES["small"], [])


def test_decode_benchmark_reports_the_rates_and_ratios_of_its_times(capsys):
    require_module("transformers")
    assert main(["bench", "decode", "--size", "tiny", "--batch", "6", "--max-len", "5", "--repeats", "1",
                 "--skip", "memory"]) == 0
    result = report(capsys)
    runs = result["results"]
    assert {"attnlab_greedy", "attnlab_beam4", "hf_marian_greedy", "hf_marian_beam4", "attnlab_int8_greedy",
            "attnlab_int8_beam4", "hf_marian_int8_greedy", "hf_marian_int8_beam4",
            "nn_transformer_greedy_no_cache", "attnlab_greedy_no_cache"} <= set(result["results"])
    assert {"attnlab_int8_greedy_vs_hf_marian_int8_greedy", "attnlab_int8_beam4_vs_hf_marian_beam4"} <= set(result["ratios"])
    def rounding(*names):  # the relative error of seconds reported to 4 digits
        return sum(5e-5 / runs[n]["seconds"] for n in names) + 1e-3

    for name, r in runs.items():  # rates and ratios from the measured seconds
        assert r["sentences_per_s"] == pytest.approx(6 / r["seconds"], rel=rounding(name), abs=0.05), name
    for pair, ratio in result["ratios"].items():
        ours, theirs = pair.split("_vs_")
        expected = runs[theirs]["seconds"] / runs[ours]["seconds"]
        assert ratio == pytest.approx(expected, rel=rounding(ours, theirs), abs=5e-4), pair


@pytest.mark.slow  # > 40 s on 2 shared cores (pytest --durations)
def test_decode_memory_probe_grows_with_output_length(capsys):
    assert main(["bench", "decode", "--size", "tiny", "--batch", "2", "--max-len", "2", "--repeats", "1",
                 "--skip", "hf,reference,int8", "--memory-lengths", "8,16", "--memory-batch", "2", "--device", "cpu"]) == 0
    result = report(capsys)
    curve = result["memory_vs_output_length"]
    assert [r["output_len"] for r in curve["cache"]] == [8, 16] and len(curve["recompute"]) == 2
    assert result["device"] == {"device": "cpu"} and "peak_rss_mib" in curve["cache"][0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no GPU")
@pytest.mark.parametrize("kind", ["train", "decode"])
def test_bench_device_cuda_without_a_gpu_is_a_one_line_error(kind, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", kind, "--size", "tiny", "--device", "cuda"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"attnlab bench {kind}: error: --device cuda: no CUDA GPU is available here" in err
    assert "Traceback" not in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_benchmarks_run_on_a_gpu(capsys):
    require_module("transformers")
    assert main(["bench", "train", "--size", "tiny", "--batches", "2", "--repeats", "1", "--batch-size", "8",
                 "--configs", "ref-fp32,ref-bf16,attnlab-fp32,attnlab-bf16", "--device", "cuda"]) == 0
    result = report(capsys)
    assert result["device"]["gpu"] and set(result["matmul_peak_tflops"]) == {"fp32", "bf16"}
    assert all(r["tokens_per_s"] > 0 and r["peak_gpu_allocated_mib"] > 0 for r in result["results"].values())
    assert main(["bench", "decode", "--size", "tiny", "--batch", "6", "--max-len", "5", "--repeats", "1",
                 "--memory-lengths", "8,16", "--memory-batch", "2", "--device", "cuda"]) == 0
    result = report(capsys)
    assert "int8" in result["skipped_on_gpu"] and not any("int8" in k for k in result["results"])
    assert result["memory_vs_output_length"]["cache"][0]["peak_gpu_allocated_mib"] > 0


def test_attention_benchmark_times_both_paths(capsys):
    assert main(["bench", "attention", "--lengths", "16,32", "--tokens", "64", "--repeats", "1", "--heads", "2",
                 "--head-dim", "8"]) == 0
    rows = report(capsys)["rows"]
    assert [r["T"] for r in rows] == [16, 32]
    assert all(r["fused_train_ms"] > 0 and r["naive_train_ms"] > 0 for r in rows)
