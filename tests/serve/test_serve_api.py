"""The HTTP API in-process: translations equal the library's, attention payloads are the model's
weights, every limit and bad input is a 4xx with a message, and the service keeps answering."""
from __future__ import annotations

import asyncio
import io

import pytest
import torch

from required import require_module

require_module("fastapi", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from attnlab.translate import source_ids  # noqa: E402
from serve_support import FakeCaptioner, png_bytes  # noqa: E402

DATES = ["April 1, 2038", "July 13, 1914", "June 23, 2083", "December 31, 1999", "May 5, 1960"]


def still_serving(client: TestClient) -> None:
    r = client.post("/translate", json={"text": DATES[0]})
    assert r.status_code == 200, r.text
    assert r.json()["translations"] == ["1. April 2038"]


# ---- translation ---------------------------------------------------------------------------------

def test_one_sentence_equals_the_library(client, translator):
    r = client.post("/translate", json={"text": DATES[1]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["translations"] == translator.translate([DATES[1]]) == ["13. Juli 1914"]
    assert body["beam"] == 1 and body["attention"] is None and body["truncated"] == []


@pytest.mark.parametrize("beam", [1, 3])
def test_many_sentences_keep_order_and_blank_lines(client, translator, beam):
    sentences = [DATES[2], "", "   ", DATES[3], DATES[4]]
    r = client.post("/translate", json={"text": sentences, "beam": beam})
    assert r.status_code == 200, r.text
    got = r.json()["translations"]
    assert got == translator.translate(sentences, beam=beam)
    assert got[1] == got[2] == "" and all(got[i] for i in (0, 3, 4))


def test_concurrent_requests_are_batched_and_unchanged(make_app, translator):
    import httpx

    app = make_app(max_batch=16, batch_wait_ms=200)

    async def main() -> tuple[list[dict], dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            rs = await asyncio.gather(*(c.post("/translate", json={"text": d}) for d in DATES * 2))
            health = (await c.get("/health")).json()
        return [r.json() for r in rs], health

    bodies, health = asyncio.run(main())
    assert [b["translations"][0] for b in bodies] == translator.translate(DATES * 2)
    assert health["batching"]["requests"] == 10
    assert health["batching"]["batches"] < 10 and health["batching"]["largest_batch"] > 1


def test_overlong_input_is_truncated_and_reported(make_app):
    with TestClient(make_app(max_src_tokens=8)) as c:
        r = c.post("/translate", json={"text": [DATES[0], "June 23, 2083 " * 8]})
    assert r.status_code == 200, r.text
    assert r.json()["truncated"] == [1]


# ---- attention -----------------------------------------------------------------------------------

def test_attention_payload_is_the_models_cross_attention(client, translator):
    sentences = [DATES[0], "", DATES[3]]
    r = client.post("/translate", json={"text": sentences, "attention": True, "beam": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["translations"] == translator.translate(sentences, beam=2)
    assert body["attention"][1] is None  # a blank line has no attention
    for i in (0, 2):
        att = body["attention"][i]
        src = source_ids(translator.tokenizers, sentences[i])
        out = translator.tokenizers.tgt.encode(body["translations"][i])
        assert att["source_tokens"] == [translator.tokenizers.src.id_to_token(t) for t in src]
        assert att["source_tokens"][-1] == "</s>" and att["target_tokens"][-1] == "</s>"
        w = torch.tensor(att["weights"], dtype=torch.float64)  # (L, H, T, S)
        cfg = translator.model.cfg
        assert w.shape == (cfg.n_layers, cfg.n_heads, len(att["target_tokens"]), len(src))
        assert (att["layers"], att["heads"]) == (cfg.n_layers, cfg.n_heads)
        assert (w >= 0).all() and (w <= 1).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:3], dtype=torch.float64),
                                   atol=5e-5 * len(src) + 1e-9, rtol=0)
        # the numbers are the model's own, rounded to 4 decimals
        tgt_in = torch.tensor([[translator.bos_id] + out])
        expected = translator.model.attention_maps(torch.tensor([src]), tgt_in)["cross"][:, 0].double()
        if expected.shape == w.shape:  # re-encoding the detokenised text may split differently
            torch.testing.assert_close(w, expected, atol=5.1e-5, rtol=0)


def test_attention_for_too_many_sentences_is_refused(client):
    r = client.post("/translate", json={"text": DATES, "attention": True})
    assert r.status_code == 422
    assert "at most 4 sentences" in r.json()["error"]
    still_serving(client)


# ---- limits and bad input: 4xx with a message, and the service goes on ---------------------------

BAD_JSON_REQUESTS = [
    # (json body, status, words the message must contain)
    ({"text": DATES * 2}, 422, ["text", "at most 8"]),
    ({"text": "x" * 201}, 422, ["text[0]", "at most 200 characters"]),
    ({"text": [DATES[0], "y" * 201]}, 422, ["text[1]", "at most 200 characters"]),
    ({"text": DATES[0], "beam": 5}, 422, ["beam", "less than or equal to 4"]),
    ({"text": DATES[0], "beam": 0}, 422, ["beam", "greater than or equal to 1"]),
    ({"text": DATES[0], "beam": "2"}, 422, ["beam", "valid integer"]),
    ({"text": DATES[0], "beam": 2.5}, 422, ["beam", "valid integer"]),
    ({"text": DATES[0], "beam": True}, 422, ["beam", "valid integer"]),
    ({"text": DATES[0], "attention": "yes"}, 422, ["attention", "valid boolean"]),
    ({"text": 5}, 422, ["text", "a string or a list of strings"]),
    ({"text": [1, 2]}, 422, ["text[0]", "valid string"]),
    ({"text": None}, 422, ["text", "a string or a list of strings"]),
    ({"text": []}, 422, ["text", "at least 1"]),
    ({}, 422, ["text", "Field required"]),
    ({"sentences": [DATES[0]]}, 422, ["sentences", "Extra inputs"]),
    ([DATES[0]], 422, ["JSON object"]),
    ("April 1, 2038", 422, ["JSON object"]),
]


@pytest.mark.parametrize("body,status,words", BAD_JSON_REQUESTS, ids=lambda v: str(v)[:40] if isinstance(v, (dict, list, str)) else None)
def test_bad_requests_are_4xx_with_a_message(client, body, status, words):
    r = client.post("/translate", json=body)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    for word in words:
        assert word in message, message
    still_serving(client)


@pytest.mark.parametrize("raw,content_type,status,words", [
    (b'{"text": "April 1, 2038"', "application/json", 400, ["malformed JSON"]),
    (b"{'text': 'a'}", "application/json", 400, ["malformed JSON", "double quotes"]),
    (b"", "application/json", 422, ["JSON object"]),
    (b'{"text": "\\ud800"}', "application/json", 422, ["text[0]", "unicode"]),
    (b"\xff\xfe\x00garbage", "application/json", 400, ["malformed JSON"]),
    (b'{"text": "April 1, 2038"}', "text/plain", 422, ["JSON object", "application/json"]),
    (b"text=April", "application/x-www-form-urlencoded", 422, ["JSON object"]),
])
def test_malformed_bodies_are_4xx_with_a_message(client, raw, content_type, status, words):
    r = client.post("/translate", content=raw, headers={"content-type": content_type})
    assert r.status_code == status, r.text
    for word in words:
        assert word in r.json()["error"], r.json()["error"]
    still_serving(client)


def test_body_over_the_limit_is_413_with_and_without_content_length(client):
    big = b'{"text": "' + b"a" * 40_000 + b'"}'
    r = client.post("/translate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "larger than the limit of 32000 bytes" in r.json()["error"]

    def chunks():  # streamed: no Content-Length, so the limit is counted while reading
        for _ in range(50):
            yield b"a" * 1000

    r = client.post("/translate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "larger than the limit" in r.json()["error"]
    still_serving(client)


def test_unknown_paths_and_methods_are_clear(client):
    r = client.get("/translate")
    assert r.status_code == 405 and r.json()["error"] == "Method Not Allowed"
    r = client.post("/nowhere", json={})
    assert r.status_code == 404 and r.json()["error"] == "Not Found"


def test_full_queue_is_503_with_retry_after(make_app):
    with TestClient(make_app(max_queue=2)) as c:
        r = c.post("/translate", json={"text": DATES[:3]})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
        assert c.post("/translate", json={"text": DATES[:2]}).status_code == 200


# ---- /caption ------------------------------------------------------------------------------------

def test_caption_on_a_translator_is_404_with_a_message(client):
    r = client.post("/caption", files={"image": ("x.png", png_bytes(), "image/png")})
    assert r.status_code == 404
    assert "not an image captioner" in r.json()["error"]
    still_serving(client)


@pytest.fixture(scope="module")
def captioner_client(make_app):
    fake = FakeCaptioner()
    with TestClient(make_app(captioner=fake, with_translator=False)) as c:
        c.fake = fake
        yield c


def test_caption_an_image(captioner_client):
    r = captioner_client.post("/caption", files={"image": ("dog.png", png_bytes(64, 48), "image/png")},
                              data={"beam": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["caption"] == "a dog runs on grass" and body["words"] == FakeCaptioner.words
    assert body["grid"] == [3, 4] and len(body["attention"]) == 5 and len(body["attention"][0]) == 12
    assert (body["width"], body["height"]) == (64, 48)
    assert captioner_client.fake.calls[-1][1] == 3


def test_a_captioner_has_no_translate(captioner_client):
    r = captioner_client.post("/translate", json={"text": "a"})
    assert r.status_code == 404 and "captioner, not a translator" in r.json()["error"]
    health = captioner_client.get("/health").json()
    assert health["capabilities"] == {"translate": False, "caption": True}


def _truncated_png() -> bytes:
    data = png_bytes(32, 32)
    return data[: len(data) // 2]


def _big_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (400, 400)).save(buf, format="JPEG")  # 160,000 pixels > the 100,000 limit
    return buf.getvalue()


@pytest.mark.parametrize("files,data,status,words", [
    ({"image": ("notes.txt", b"hello, not an image", "text/plain")}, {}, 400, ["not an image"]),
    ({"image": ("empty.png", b"", "image/png")}, {}, 400, ["empty"]),
    ({"image": ("half.png", _truncated_png(), "image/png")}, {}, 400, ["corrupt or truncated"]),
    ({"image": ("big.jpg", _big_jpeg(), "image/jpeg")}, {}, 413, ["400x400", "limit"]),
    ({"image": ("huge.bin", b"\x89PNG" + b"0" * 210_000, "image/png")}, {}, 413, ["larger than the limit"]),
    ({"picture": ("x.png", png_bytes(), "image/png")}, {}, 422, ["image", "Field required"]),
    ({"image": ("x.png", png_bytes(), "image/png")}, {"beam": "9"}, 422, ["beam", "less than or equal to 4"]),
    ({"image": ("x.png", png_bytes(), "image/png")}, {"beam": "two"}, 422, ["beam", "valid integer"]),
])
def test_bad_uploads_are_4xx_with_a_message(captioner_client, files, data, status, words):
    r = captioner_client.post("/caption", files=files, data=data)
    assert r.status_code == status, r.text
    for word in words:
        assert word in r.json()["error"], r.json()["error"]
    assert captioner_client.post("/caption", files={"image": ("ok.png", png_bytes(), "image/png")}).status_code == 200


def test_caption_without_multipart_is_422(captioner_client):
    r = captioner_client.post("/caption", json={"image": "aGVsbG8="})
    assert r.status_code == 422 and "image" in r.json()["error"]


# ---- /health, /openapi.json, the page ------------------------------------------------------------

def test_health(client, translator):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["uptime_s"] >= 0
    assert body["capabilities"] == {"translate": True, "caption": False}
    m = body["model"]
    assert m["arch"] == "transformer" and m["task"] == "dates" and m["attention"] is True
    assert m["vocab"] == {"src": translator.tokenizers.src.vocab_size, "tgt": translator.tokenizers.tgt.vocab_size}
    assert m["config"] == {"d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64}
    assert m["parameters"] == translator.model.num_parameters() and m["int8"] is False
    assert body["limits"]["max_sentences"] == 8 and body["batching"]["sentences"] > 0


def test_int8_serving_decodes_as_the_library_int8_translator(make_app, translator):
    from attnlab.quantize import quantize_int8
    from attnlab.serve import create_app
    from attnlab.translate import Translator

    library_int8 = Translator(quantize_int8(translator.model), translator.tokenizers, translator.device, translator.meta)
    with TestClient(make_app(int8=True)) as c:
        for beam in (1, 3):
            r = c.post("/translate", json={"text": DATES, "beam": beam})
            assert r.status_code == 200, r.text
            assert r.json()["translations"] == library_int8.translate(DATES, beam=beam)
        assert c.get("/health").json()["model"]["int8"] is True
    assert type(translator.model.output_projection) is torch.nn.Linear  # the translator passed in is left alone
    with pytest.raises(ValueError, match="int8 serving applies to translation models"):
        create_app(None, int8=True)


def test_openapi_schema_documents_the_limits(client):
    spec = client.get("/openapi.json").json()
    assert {"/translate", "/caption", "/health"} <= set(spec["paths"]) and "/" not in spec["paths"]
    schemas = spec["components"]["schemas"]
    props = schemas["TranslateRequest"]["properties"]
    beam = next(v for v in props["beam"]["anyOf"] if v.get("type") == "integer")  # or null: the model's own
    assert beam["maximum"] == 4 and beam["minimum"] == 1 and props["beam"].get("default") is None
    variants = props["text"]["anyOf"]
    assert {"type": "string", "maxLength": 200} in variants
    assert any(v.get("type") == "array" and v["maxItems"] == 8 for v in variants)
    assert {"400", "413", "422"} <= set(spec["paths"]["/translate"]["post"]["responses"])


def test_the_page_and_its_assets_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="translate-form"' in r.text and 'id="heatmap"' in r.text and 'id="caption-form"' in r.text
    for asset, kind in [("/static/app.js", "javascript"), ("/static/style.css", "text/css")]:
        r = client.get(asset)
        assert r.status_code == 200 and kind in r.headers["content-type"]


# ---- the command line ----------------------------------------------------------------------------

def test_serve_without_fastapi_is_a_one_line_error(monkeypatch, capsys, tiny_run):
    from attnlab.cli import main
    from attnlab.commands import serve

    monkeypatch.setattr(serve, "missing_dependencies", lambda: ["fastapi", "uvicorn"])
    assert main(["serve", "--model", str(tiny_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "attnlab serve: error: serving needs fastapi, uvicorn: pip install 'attnlab[serve]'"


def test_serve_a_missing_model_is_a_one_line_error(capsys, tmp_path):
    from attnlab.cli import main

    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
