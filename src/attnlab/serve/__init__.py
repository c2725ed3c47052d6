"""HTTP service and web page for attnlab models (needs the `serve` extra: FastAPI and uvicorn).

    from attnlab.serve import create_app, Limits
    app = create_app("runs/m30k", limits=Limits(max_sentences=16))   # then: uvicorn.run(app)
"""
from attnlab.serve.app import create_app
from attnlab.serve.schemas import Limits

__all__ = ["Limits", "create_app"]
