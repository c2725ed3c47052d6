"""Bounded load tests against `attnlab serve` subprocesses on loopback, from this (second) process.

The default run: 200 requests, 50 in flight, against a batching server and a one-by-one server
(`--max-batch 1`) of the same untrained `tiny`-preset model (d_model=128; its outputs run to the
length limit, so decoding dominates as it does for a real model). Both must answer every request;
throughput, p50 and p99 latency, and the batching gain go to the terminal summary. Then 200 to the
trained test model, where every answer must equal the library's translation of the same sentence
(batching changes nothing). The slow run
(`pytest -m slow`) sends 2,000 mixed requests (several sentences, beams, attention).
"""
from __future__ import annotations

import asyncio

import pytest

from required import require_module

require_module("uvicorn", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
require_module("httpx")

import serve_support  # noqa: E402
from serve_support import Server, load, write_random_run  # noqa: E402


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    run = write_random_run(tmp_path_factory.mktemp("random_tiny"), preset="tiny")
    logs = tmp_path_factory.mktemp("load_logs")
    started = {"batched": Server(run, "--threads", "1", log=logs / "batched.log"),
               "one-by-one": Server(run, "--threads", "1", "--max-batch", "1", log=logs / "one_by_one.log")}
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def report(name: str, r: dict) -> str:
    line = (f"{name:>11}: {r['requests']} requests, {r['concurrency']} concurrent: {r['throughput_rps']} req/s, "
            f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, failures {r['failures']}, "
            f"mean batch {r['server_batching']['mean_batch']}")
    serve_support.REPORT.append(line)
    return line


@pytest.mark.slow  # > 40 s on 2 shared cores (pytest --durations)
def test_200_concurrent_requests_all_answered_and_batching_raises_throughput(servers):
    results = {}
    for name, server in servers.items():
        asyncio.run(load(server.url, 20, 10, seed=7, require_text=False))  # warm up: connections, first calls
        results[name] = asyncio.run(load(server.url, 200, 50, require_text=False))
        print(report(name, results[name]))
    for name, r in results.items():
        assert r["failures"] == 0, (name, r["failure_examples"])
    gain = results["batched"]["throughput_rps"] / results["one-by-one"]["throughput_rps"]
    serve_support.REPORT.append(f"batching gain: {gain:.2f}x throughput")
    assert results["batched"]["server_batching"]["mean_batch"] > 1.5
    assert results["one-by-one"]["server_batching"]["largest_batch"] == 1
    assert gain > 1.5, results


def test_200_concurrent_requests_to_the_trained_model_translate_as_the_library(tiny_server, translator):
    sentences = serve_support.date_sentences(200, seed=11)
    expect = {s: translator.translate([s])[0] for s in sentences}  # each alone, as a lone request would be
    r = asyncio.run(load(tiny_server.url, 200, 50, seed=11, expect=expect))
    print(report("tiny model", r))
    assert r["failures"] == 0, r["failure_examples"]


@pytest.mark.slow
def test_2000_mixed_requests(servers):
    def payload(i: int, text: str) -> dict:
        if i % 10 == 0:
            return {"text": [text, "", text.upper()], "beam": 2}
        if i % 10 == 1:
            return {"text": text, "attention": True}
        return {"text": text, "beam": 1 + i % 3}

    r = asyncio.run(load(servers["batched"].url, 2000, 100, seed=3, require_text=False, payload=payload))
    print(report("mixed", r))
    assert r["failures"] == 0, r["failure_examples"]
