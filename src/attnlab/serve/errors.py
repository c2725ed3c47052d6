"""Errors as the service answers them: JSON {"error": one line, "detail": ...}, never a bare 500.

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from attnlab.serve.metrics import Metrics


class Refused(HTTPException):
    """A request refused before (or instead of) its work, counted in the metrics by `reason`."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None):
        super().__init__(status, message, headers=headers)
        self.reason = reason


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if part in ("body", "form") and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(errors: list[dict]) -> str:
    parts = []
    for e in errors[:5]:
        msg = str(e.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        where = _where(tuple(e.get("loc", ())))
        if not where and e.get("type") in ("missing", "model_attributes_type", "dict_type", "model_type"):
            msg = ('the body must be a JSON object such as {"text": "a sentence"}, '
                   "sent with Content-Type: application/json")
        parts.append(f"{where}: {msg}" if where else msg)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        for e in errors:
            e.pop("input", None)  # may be megabytes of the caller's own text
            e.pop("url", None)
        metrics.reject("invalid")
        bad_json = [e for e in errors if e.get("type") == "json_invalid"]
        if bad_json:
            e = bad_json[0]
            where = e.get("loc", ("body", "?"))[-1]
            reason = (e.get("ctx") or {}).get("error", "not valid JSON")
            message = f"malformed JSON: {reason} (at character {where})"
            return JSONResponse({"error": message, "detail": jsonable_encoder(errors)}, status_code=400)
        return JSONResponse({"error": _describe(errors), "detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, Refused):
            metrics.reject(exc.reason)
        return JSONResponse({"error": str(exc.detail), "detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:  # the middleware's Guard answers first
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)
