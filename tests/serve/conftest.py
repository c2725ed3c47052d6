"""Fixtures for the serve tests: one tiny trained model for the session, loaded once, and apps with
test-sized limits around it. FastAPI (the `serve` extra) is needed; the tests skip without it."""
from __future__ import annotations

import pytest
import torch

import serve_support


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
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
    from attnlab.serve import Limits, create_app

    def make(captioner=None, with_translator=True, **overrides):
        return create_app(translator if with_translator else None, captioner=captioner,
                          limits=Limits(**{**TEST_LIMITS, **overrides}))

    return make


@pytest.fixture(scope="session")
def client(make_app):
    from fastapi.testclient import TestClient

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core CI machine: one model thread is fastest
    with TestClient(make_app()) as c:
        yield c
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter):
    if serve_support.REPORT:
        terminalreporter.section("attnlab serve: load test")
        for line in serve_support.REPORT:
            terminalreporter.write_line(line)
