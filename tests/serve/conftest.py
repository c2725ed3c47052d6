"""Fixtures for the serve tests: one tiny trained model for the session, loaded once, and apps with
test-sized limits around it. FastAPI (the `serve` extra) is needed; the tests skip without it."""
from __future__ import annotations

import pytest
import torch

from required import require_module

import serve_support


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Decoding tiny models: one thread is fastest, and on a shared 2-core machine several OpenMP
    threads spinning against the servers' threads slow everything down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return serve_support.write_tiny_run(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def translator(tiny_run):
    from attnlab.translate import Translator

    return Translator.load(tiny_run)


# small limits so every limit is cheap to hit
TEST_LIMITS = dict(max_sentences=8, max_chars=200, max_beam=4, max_body_bytes=32_000, max_image_bytes=200_000,
                   max_image_pixels=100_000, max_attention_sentences=4)


@pytest.fixture(scope="session")
def make_app(translator):
    """create_app around the session's loaded translator (no reload), with test limits + overrides."""
    require_module("fastapi", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
    from attnlab.serve import Limits, create_app

    def make(captioner=None, with_translator=True, int8=False, api_key=None, allowed_hosts=None, docs=False,
             **overrides):
        return create_app(translator if with_translator else None, captioner=captioner,
                          limits=Limits(**{**TEST_LIMITS, **overrides}), int8=int8, api_key=api_key,
                          allowed_hosts=allowed_hosts, docs=docs)

    return make


@pytest.fixture(scope="session")
def client(make_app):
    from fastapi.testclient import TestClient

    with TestClient(make_app()) as c:
        yield c


@pytest.fixture(scope="session")
def tiny_server(tiny_run, tmp_path_factory):
    """`attnlab serve` on the tiny model in a subprocess on a free loopback port."""
    require_module("uvicorn", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
    log = tmp_path_factory.mktemp("tiny_server") / "server.log"
    server = serve_support.Server(tiny_run, "--threads", "1", log=log)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter):
    if serve_support.REPORT:
        terminalreporter.section("attnlab serve: load test")
        for line in serve_support.REPORT:
            terminalreporter.write_line(line)
