"""The service under abuse: work budget, answer cap, attention selection, failure isolation, deadline,
API key, allowed hosts, metrics, readiness, security headers, uploads, models without attention."""
from __future__ import annotations

import asyncio
import base64
import io
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
from fastapi.testclient import TestClient
from serve_support import FakeCaptioner, png_bytes

from attnlab.translate import source_ids

DATES = ["April 1, 2038", "July 13, 1914", "June 23, 2083", "December 31, 1999", "May 5, 1960"]


def error_of(r) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text[:200]
    return r.json()["error"]


# ---- what a request may cost ---------------------------------------------------------------------

def test_a_request_over_the_work_budget_is_refused_before_any_work(make_app, translator):
    ids = source_ids(translator.tokenizers, DATES[0])
    one = len(ids) * 4 * int(1.5 * len(ids) + 10)  # tokens x beam x longest output
    with TestClient(make_app(max_work=2 * one)) as c:
        assert c.post("/translate", json={"text": DATES[0], "beam": 4}).status_code == 200
        before = c.get("/health").json()["batching"]["batches"]
        r = c.post("/translate", json={"text": [DATES[0]] * 3, "beam": 4})
        assert r.status_code == 413
        assert f"needs {3 * one:,} units of work" in error_of(r) and f"limit is {2 * one:,}" in error_of(r)
        assert c.get("/health").json()["batching"]["batches"] == before  # refused before decoding
        assert c.post("/translate", json={"text": [DATES[0]] * 3, "beam": 1}).status_code == 200  # beam 1 fits
        assert 'attnlab_rejected_total{reason="work_budget"} 1.0' in c.get("/metrics").text


def test_an_answer_over_the_cap_is_refused_with_how_to_ask_for_less(make_app):
    # all layers and heads in JSON for 4 sentences could reach ~30 kB here; the cap is 20 kB
    with TestClient(make_app(max_response_mb=0.02)) as c:
        before = c.get("/health").json()["batching"]["batches"]
        r = c.post("/translate", json={"text": DATES[:4], "attention": True})
        assert r.status_code == 413
        message = error_of(r)
        assert "over the limit of 0.02 MB" in message and '"heads": "mean"' in message and '"f16"' in message
        assert c.get("/health").json()["batching"]["batches"] == before
        r = c.post("/translate", json={"text": DATES[:4], "attention": {"layers": "last", "heads": "mean",
                                                                        "format": "f16"}})
        assert r.status_code == 200, r.text
        assert len(r.content) <= 20_000 and all(a["weights_f16"] for a in r.json()["attention"])


def test_selected_attention_is_the_models_in_float16(client, translator):
    sentences = [DATES[0], DATES[2], DATES[3]]
    r = client.post("/translate", json={"text": sentences, "attention": {"layers": [1], "heads": "mean",
                                                                         "sentences": [2], "format": "f16"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["attention"][0] is None and body["attention"][1] is None
    att = body["attention"][2]
    assert att["layer_index"] == [1] and att["head_index"] is None and att["weights"] is None
    src = source_ids(translator.tokenizers, sentences[2])
    out = translator.tokenizers.tgt.encode(body["translations"][2])
    w = np.frombuffer(base64.b64decode(att["weights_f16"]), dtype="<f2").reshape(att["shape"])
    assert att["shape"] == [1, 1, len(out) + 1, len(src)]
    expected = translator.model.attention_maps(torch.tensor([src]), torch.tensor([[translator.bos_id] + out]))
    expected = expected["cross"][1, 0].mean(0)  # layer 1, mean of heads: (T, S)
    np.testing.assert_allclose(w[0, 0], expected.numpy(), atol=1e-3)

    r = client.post("/translate", json={"text": sentences, "attention": {"heads": [0, 3]}})
    att = r.json()["attention"][0]
    assert att["head_index"] == [0, 3] and att["layer_index"] == [0, 1]
    assert np.array(att["weights"]).shape == tuple(att["shape"]) and att["shape"][:2] == [2, 2]


@pytest.mark.parametrize("attention,words", [
    ({"sentences": [3]}, ["indices must be below the 2 sentences"]),
    ({"layers": [2]}, ["attention.AttentionRequest.layers", "less than or equal to 1"]),
    ({"heads": [4]}, ["less than or equal to 3"]),
    ({"format": "f64"}, ["format"]),
])
def test_bad_attention_selections_are_422(client, attention, words):
    r = client.post("/translate", json={"text": DATES[:2], "attention": attention})
    assert r.status_code == 422, r.text
    for word in words:
        assert word in error_of(r), error_of(r)


# ---- failures and deadlines ----------------------------------------------------------------------

def test_a_failing_sentence_fails_only_its_own_request_with_json(make_app, translator):
    app = make_app(max_batch=16, batch_wait_ms=300)
    bad = source_ids(translator.tokenizers, DATES[4])
    batcher = app.state.service.batcher
    real = batcher.decode

    def decode(sources, beam):
        if bad in sources:
            raise RuntimeError("the model broke on this sentence")
        return real(sources, beam)

    batcher.decode = decode

    async def main():
        import httpx

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c, \
                app.router.lifespan_context(app):
                return await asyncio.gather(*(c.post("/translate", json={"text": d}) for d in DATES))

    rs = asyncio.run(main())
    assert [r.status_code for r in rs] == [200, 200, 200, 200, 500]
    assert [r.json()["translations"][0] for r in rs[:4]] == translator.translate(DATES[:4])
    assert "internal error (RuntimeError)" in error_of(rs[4])
    assert "nosniff" == rs[4].headers["x-content-type-options"]  # the catch-all answer has the headers too


def test_a_request_past_its_deadline_is_504_and_its_queued_work_is_dropped(make_app):
    app = make_app(request_timeout_s=0.3, max_batch=1)
    batcher = app.state.service.batcher
    real = batcher.decode

    def slow(sources, beam):
        time.sleep(0.6)
        return real(sources, beam)

    batcher.decode = slow

    async def main():
        import httpx

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c, \
                app.router.lifespan_context(app):
                rs = await asyncio.gather(*(c.post("/translate", json={"text": d}) for d in DATES[:2]))
                await asyncio.sleep(0.5)
                return rs

    rs = asyncio.run(main())
    assert [r.status_code for r in rs] == [504, 504]
    assert "within the request timeout of 0.3 s" in error_of(rs[0]) and rs[0].headers["retry-after"] == "5"
    assert batcher.stats.cancelled == 1  # the second never reached the model


def test_a_client_that_goes_away_cancels_its_work(make_app):
    app = make_app()
    service = app.state.service

    class GoneRequest:
        async def is_disconnected(self) -> bool:
            return True

    async def main():
        started = asyncio.Event()

        async def work():
            started.set()
            await asyncio.sleep(10)

        task = asyncio.ensure_future(service.within_deadline(GoneRequest(), work()))
        with pytest.raises(Exception) as err:
            await asyncio.wait_for(task, 2)
        return err.value

    err = asyncio.run(main())
    assert err.status_code == 499 and "cancelled" in err.detail


# ---- access --------------------------------------------------------------------------------------

def test_api_key(make_app):
    with TestClient(make_app(api_key="s3cret")) as c:
        r = c.post("/translate", json={"text": DATES[0]})
        assert r.status_code == 401 and "Bearer" in error_of(r) and r.headers["www-authenticate"] == "Bearer"
        r = c.post("/translate", json={"text": DATES[0]}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "wrong" in error_of(r)
        r = c.post("/translate", json={"text": DATES[0]}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["translations"] == ["1. April 2038"]
        assert c.get("/metrics").status_code == 401
        for open_path in ("/health", "/ready", "/", "/static/app.js"):
            assert c.get(open_path).status_code == 200, open_path
        assert c.get("/health").json()["api_key_required"] is True


def test_allowed_hosts(make_app):
    with TestClient(make_app(allowed_hosts=["mt.example.org", "*.example.net"])) as c:
        r = c.get("/health")  # Host: testserver
        assert r.status_code == 400 and "'testserver' is not served here" in error_of(r)
        assert c.get("/health", headers={"Host": "mt.example.org"}).status_code == 200
        assert c.post("/translate", json={"text": DATES[0]}, headers={"Host": "a.example.net:8443"}).status_code == 200
        assert 'attnlab_rejected_total{reason="host"} 1.0' in c.get("/metrics", headers={"Host": "mt.example.org"}).text


# ---- what it says about itself -------------------------------------------------------------------

def test_metrics(make_app):
    with TestClient(make_app()) as c:
        for d in DATES[:3]:
            assert c.post("/translate", json={"text": d}).status_code == 200
        c.post("/translate", json={"text": DATES[0], "beam": 99})
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
    for line in ['attnlab_requests_total{route="/translate",status="200"} 3.0',
                 'attnlab_requests_total{route="/translate",status="422"} 1.0',
                 'attnlab_rejected_total{reason="invalid"} 1.0',
                 'attnlab_request_seconds_count{route="/translate"} 4.0',
                 'attnlab_batch_sentences_count{lane="interactive"} 3.0',
                 "attnlab_queue_depth 0.0"]:
        assert line in text, line
    tokens = float(next(x for x in text.splitlines() if x.startswith("attnlab_output_tokens_total ")).split()[1])
    assert tokens >= 3 * 5 and "attnlab_tokens_per_second" in text


def test_health_and_ready(make_app):
    with TestClient(make_app(max_queue=4)) as c:
        body = c.get("/health").json()
        assert body["model_loaded"] is True and body["queue"] == {"waiting": 0, "max_queue": 4, "full": False}
        assert c.get("/ready").json() == {"ready": True, "waiting": 0, "max_queue": 4}
        c.app.state.service.batcher.waiting = 4  # as if 4 sentences were waiting
        try:
            r = c.get("/ready")
            assert r.status_code == 503 and r.json()["ready"] is False and "full" in error_of(r)
            assert c.get("/health").json()["queue"]["full"] is True
        finally:
            c.app.state.service.batcher.waiting = 0


def test_security_headers_and_no_cdn(make_app, client):
    for method, path in [("GET", "/"), ("POST", "/translate"), ("GET", "/nowhere"), ("GET", "/static/app.js")]:
        r = client.request(method, path, json={"text": DATES[0]} if method == "POST" else None)
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "http" not in csp, path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    page = client.get("/").text
    assert "http://" not in page and "https://" not in page and "<script>" not in page
    assert client.get("/docs").status_code == 404  # off by default: Swagger UI would come from a CDN
    with TestClient(make_app(docs=True)) as c:
        r = c.get("/docs")
        assert r.status_code == 200 and "cdn.jsdelivr.net" in r.headers["content-security-policy"]


# ---- models without attention --------------------------------------------------------------------

@pytest.mark.parametrize("arch,attends", [("rnn", False), ("rnn-attn", True)])
def test_attention_from_a_model_without_it_is_a_4xx_that_says_so(make_app, translator, arch, attends):
    from attnlab.models.rnn import RNNAttentionConfig, RNNConfig, RNNEncoderDecoder
    from attnlab.serve import Limits, create_app
    from attnlab.translate import Translator

    tok = translator.tokenizers
    cls = RNNConfig if arch == "rnn" else RNNAttentionConfig
    cfg = cls(d_embed=16, d_hidden=32, n_layers=1, dropout=0.0, src_vocab_size=tok.src.vocab_size,
              tgt_vocab_size=tok.tgt.vocab_size, pad_id=tok.src.pad_id)
    rnn = Translator(RNNEncoderDecoder(cfg).eval(), tok, "cpu", {"arch": arch})
    with TestClient(create_app(rnn, limits=Limits(max_batch=4))) as c:
        assert c.get("/health").json()["model"]["attention"] is attends
        r = c.post("/translate", json={"text": DATES[0], "attention": True})
        if attends:
            assert r.status_code == 200 and r.json()["attention"][0]["shape"][:2] == [1, 1]
        else:
            assert r.status_code == 422 and "has no attention" in error_of(r) and "fixed-context" in error_of(r)
        assert c.post("/translate", json={"text": DATES[0]}).status_code == 200


# ---- uploads -------------------------------------------------------------------------------------

def _image(fmt: str, size=(40, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def captioner_app(make_app):
    with TestClient(make_app(captioner=FakeCaptioner(), with_translator=False, max_response_mb=0.0004)) as c:
        yield c


def test_caption_accepts_only_allowed_formats_checked_by_pillow(captioner_app):
    c = captioner_app
    r = c.post("/caption", files={"image": ("photo.png", _image("TIFF"), "image/png")}, data={"attention": "false"})
    assert r.status_code == 415 and "TIFF images are not accepted" in error_of(r)
    r = c.post("/caption", files={"image": ("photo.png", b"GIF89a but not really", "image/png")})
    assert r.status_code == 400 and "not an image" in error_of(r)
    for fmt in ("JPEG", "GIF", "WEBP", "BMP"):
        r = c.post("/caption", files={"image": ("x.bin", _image(fmt), "application/octet-stream")},
                   data={"attention": "false"})
        assert r.status_code == 200 and r.json()["attention"] is None, (fmt, r.text)


def test_a_caption_answer_over_the_cap_is_refused(captioner_app):
    r = captioner_app.post("/caption", files={"image": ("x.png", png_bytes(), "image/png")})  # 5 x 12 weights
    assert r.status_code == 413 and "attention=false" in error_of(r)
    r = captioner_app.post("/caption", files={"image": ("x.png", png_bytes(), "image/png")}, data={"attention": "false"})
    assert r.status_code == 200 and r.json()["caption"] == "a dog runs on grass" and len(r.content) <= 400


def test_a_client_sending_a_body_over_the_limit_reads_the_413(tiny_server):
    """The server reads (and drops) a refused body up to 16x the limit before answering: a client
    still sending when the connection closed would get a reset, not the answer."""
    import socket

    host, port = tiny_server.url.removeprefix("http://").split(":")
    body = b'{"text": "' + b"a" * 1_500_000 + b'"}'  # the CLI's limit: 1 MiB
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
        assert b'"error": "the request body is larger than the limit of 1048576 bytes"' in answer
