"""/translate decodes with the model's own settings when the request names no beam."""
import pytest


@pytest.fixture
def tuned_client(translator):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'attnlab[serve]'")
    from fastapi.testclient import TestClient

    from attnlab.serve import Limits, create_app
    from attnlab.translate import Translator

    meta = {**translator.meta, "decode": {"beam": 3, "length_penalty": 1.0}}  # as decode tuning stores it
    tuned = Translator(translator.model, translator.tokenizers, "cpu", meta)
    with TestClient(create_app(tuned, limits=Limits(max_beam=4))) as c:
        yield c


def test_no_beam_in_the_request_is_the_models_beam(tuned_client):
    r = tuned_client.post("/translate", json={"text": "July 13, 1914"})
    assert r.status_code == 200 and r.json()["beam"] == 3
    r = tuned_client.post("/translate", json={"text": "July 13, 1914", "beam": 1})
    assert r.status_code == 200 and r.json()["beam"] == 1


def test_the_untuned_model_decodes_greedily(client):
    r = client.post("/translate", json={"text": "July 13, 1914"})
    assert r.status_code == 200 and r.json()["beam"] == 1
