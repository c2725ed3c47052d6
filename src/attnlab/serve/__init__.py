"""HTTP service and web page for attnlab models (needs the `serve` extra: FastAPI and uvicorn).

    from attnlab.serve import create_app, Limits
    app = create_app("runs/m30k", limits=Limits(max_sentences=16))   # then: uvicorn.run(app)

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from attnlab.serve.app import create_app
from attnlab.serve.schemas import Limits

__all__ = ["Limits", "create_app"]
