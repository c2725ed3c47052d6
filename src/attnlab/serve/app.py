"""The HTTP service: `create_app(run_dir) -> FastAPI`.

    POST /translate   {"text": "a sentence" | ["one", "or many"], "beam": 1, "attention": false}
                      -> {"translations": [...], "attention": [per sentence: cross-attention] | null}
    POST /caption     multipart form: image=<file>, beam=1 -> {"caption", "words", "attention", "grid"}
    GET  /health      model, vocabulary sizes, limits, batching counters, uptime
    GET  /            the web page (static/), GET /docs and /openapi.json from FastAPI

The model loads once, in `create_app`. Translations from concurrent callers are micro-batched
(batcher.py); every model call runs on one worker thread. Bad input is a 4xx with a one-line
`error` (and FastAPI's `detail`), never a 500: malformed JSON 400, wrong types and out-of-range
values 422, a body over the limit 413, a file that is not an image 400, no such model 404, a full
queue 503 with Retry-After.
"""

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import torch
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from attnlab.layers.int8 import Int8Linear
from attnlab.serve.batcher import MicroBatcher, ModelThread, Overloaded
from attnlab.serve.captioner import BadImage, Captioner, check_image, is_captioning_arch, load_captioner
from attnlab.translate import DecodeConfig, Translator, source_ids

log = logging.getLogger("attnlab.serve")
STATIC = Path(__file__).parent / "static"


@dataclass
class Limits:
    """What one request may ask for. Everything beyond is refused with a 4xx and a message."""

    max_body_bytes: int = 1 << 20  # JSON requests
    max_image_bytes: int = 8 << 20  # /caption uploads
    max_image_pixels: int = 40_000_000
    max_sentences: int = 64  # per /translate request
    max_chars: int = 1000  # per sentence
    max_beam: int = 8
    max_attention_sentences: int = 8  # attention payloads grow as layers x heads x T x S
    max_src_tokens: int = 256  # longer inputs are truncated (reported in the response)
    # micro-batching
    max_batch: int = 32  # sentences per decoding call (1 = no batching)
    batch_wait_ms: float = 5.0
    max_queue: int = 2048  # sentences waiting for the model before 503
    request_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"limit {name} must be positive, got {value}")


# ---- request and response bodies -------------------------------------------------------------

def _one_or_many(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"'text' must be a string or a list of strings, not {type(value).__name__}")
    return value


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer; strict pydantic would not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class CrossAttention(BaseModel):
    """Cross-attention of one translation: weights[layer][head][target][source], each row sums to 1."""

    source_tokens: list[str] = Field(description="source subwords as the model saw them, ending with </s>")
    target_tokens: list[str] = Field(description="output subwords, ending with </s>; row t is the attention "
                                                 "while producing target_tokens[t]")
    layers: int
    heads: int
    weights: list[list[list[list[float]]]]


class TranslateResponse(BaseModel):
    translations: list[str] = Field(description="one per input sentence, in order; blank inputs give ''")
    beam: int
    attention: list[CrossAttention | None] | None = Field(
        None, description="when asked for: one per sentence (null for blank ones)")
    truncated: list[int] = Field(default_factory=list, description="indices of inputs cut to the source token limit")
    elapsed_ms: float


class CaptionResponse(BaseModel):
    caption: str
    words: list[str]
    attention: list[list[float]] = Field(description="per word, the weight of each image region (row-major grid)")
    grid: list[int] = Field(description="[rows, columns] of the attention grid")
    width: int
    height: int
    elapsed_ms: float


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    uptime_s: float
    capabilities: dict[str, bool]
    model: dict[str, Any]
    limits: dict[str, Any]
    batching: dict[str, Any]


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, in one line")
    detail: Any = None


ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in {
    400: "malformed JSON or an unreadable upload", 404: "the loaded model cannot do this",
    413: "request body or image over the limit", 422: "a field has the wrong type or is out of range",
    503: "too busy: retry later"}.items()}


def _request_model(limits: Limits) -> type[BaseModel]:
    Sentence = Annotated[str, StringConstraints(max_length=limits.max_chars)]
    Sentences = Annotated[list[Sentence], Field(min_length=1, max_length=limits.max_sentences)]

    class TranslateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
            "examples": [{"text": "April 1, 2038"},
                         {"text": ["July 13, 1914", "June 23, 2083"], "beam": 4, "attention": True}]})

        text: Annotated[
            Sentences,
            BeforeValidator(_one_or_many, json_schema_input_type=Union[Sentence, Sentences]),
            Field(description=f"a sentence, or a list of at most {limits.max_sentences}, "
                              f"each at most {limits.max_chars} characters"),
        ]
        beam: Annotated[int, BeforeValidator(_whole_number)] = Field(1, ge=1, le=limits.max_beam,
                                                                      description="beam size (1 = greedy)")
        attention: bool = Field(False, description="return cross-attention weights (at most "
                                                   f"{limits.max_attention_sentences} sentences)")

    return TranslateRequest


# ---- the model behind the endpoints ----------------------------------------------------------

class Service:
    """The loaded model(s), the batcher and the counters; one per app."""

    def __init__(self, translator: Translator | None, captioner: Captioner | None, meta: dict, limits: Limits):
        self.translator, self.captioner, self.meta, self.limits = translator, captioner, meta, limits
        self.started = time.monotonic()
        self.model_thread = ModelThread()
        self.batcher = MicroBatcher(self._decode, self.model_thread, limits.max_batch, limits.batch_wait_ms,
                                    limits.max_queue)

    def _decode(self, sources: list[list[int]], beam: int) -> list[list[int]]:
        """Model thread: one batched decoding call. Each output is cut to its own sentence's length
        limit (a*S + b) so that a result does not depend on which batch it landed in."""
        assert self.translator is not None
        cfg = DecodeConfig(beam=beam, max_src_len=self.limits.max_src_tokens)
        outputs = self.translator.translate_ids(sources, cfg)
        return [(hyps[0] if hyps else [])[: int(cfg.max_len_a * len(src) + cfg.max_len_b)]
                for hyps, src in zip(outputs, sources)]

    def encode(self, text: str) -> tuple[list[int], bool]:
        assert self.translator is not None
        ids = source_ids(self.translator.tokenizers, text)
        if len(ids) <= self.limits.max_src_tokens:
            return ids, False
        return ids[: self.limits.max_src_tokens - 1] + [ids[-1]], True

    def cross_attention(self, src_ids: list[int], out_ids: list[int]) -> dict[str, Any]:
        """Model thread: teacher-forced pass over the decoded output, as `attnlab attention` does."""
        tr = self.translator
        assert tr is not None
        src = torch.tensor([src_ids], device=tr.device)
        tgt_in = torch.tensor([[tr.bos_id] + out_ids], device=tr.device)
        cross = tr.model.attention_maps(src, tgt_in)["cross"][:, 0]  # (L, H, T, S)
        tok_src, tok_tgt = tr.tokenizers.src, tr.tokenizers.tgt
        return {"source_tokens": [tok_src.id_to_token(i) for i in src_ids],
                "target_tokens": [tok_tgt.id_to_token(i) for i in out_ids] + ["</s>"],
                "layers": cross.shape[0], "heads": cross.shape[1],
                "weights": cross.double().round(decimals=4).tolist()}

    def model_info(self) -> dict[str, Any]:
        what = self.translator.model if self.translator is not None else self.captioner
        info: dict[str, Any] = {"arch": self.meta.get("arch") or type(what).__name__.lower()}
        if self.translator is not None:
            model = self.translator.model
            cfg = self.meta.get("model") or (model.cfg.to_dict() if hasattr(model, "cfg") else {})
            info["config"] = {k: cfg[k] for k in ("d_model", "n_heads", "n_layers", "d_ff") if k in cfg}
            int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
            info["parameters"] = sum(p.numel() for p in model.parameters()) + sum(m.qweight.numel() for m in int8)
            info["int8"] = bool(int8)
            info["vocab"] = {"src": self.translator.tokenizers.src.vocab_size,
                             "tgt": self.translator.tokenizers.tgt.vocab_size}
            info["attention"] = hasattr(model, "attention_maps")
            info["device"] = str(self.translator.device)
        task = self.meta.get("task")
        if isinstance(task, dict) and task.get("task"):
            info["task"] = task["task"]
        return info


def _load(model: Any, device: str) -> tuple[Translator | None, Captioner | None, dict]:
    from attnlab.hub import resolve_model
    from attnlab.run_dir import LoadedRun, is_marian_dir, load_run, read_run_config

    if model is None:
        return None, None, {}
    if isinstance(model, Translator):
        return model, None, dict(model.meta)
    if isinstance(model, LoadedRun):
        return Translator(model.model, model.tokenizers, device, model.meta), None, dict(model.meta)
    if isinstance(model, (str, Path)):
        path = resolve_model(model)  # a Hub name: its cached snapshot
        if is_marian_dir(path):  # a Hugging Face Marian directory (opus-mt, or attnlab's export)
            run = load_run(path, device)
            return Translator(run.model, run.tokenizers, device, run.meta), None, dict(run.meta)
        config_dir = path.parent.parent if (path / "state.json").is_file() and not (path / "config.json").is_file() else path
        meta = read_run_config(config_dir)
        if is_captioning_arch(str(meta.get("arch", ""))):
            return None, load_captioner(path, device), meta
        run = load_run(path, device)
        return Translator(run.model, run.tokenizers, device, run.meta), None, dict(run.meta)
    raise TypeError(f"create_app: expected a run directory, LoadedRun or Translator, got {type(model).__name__}")


# ---- limits and errors -----------------------------------------------------------------------

class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit (by Content-Length, or while streaming)."""

    def __init__(self, app: ASGIApp, default: int, per_path: dict[str, int]):
        self.app, self.default, self.per_path = app, default, per_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.per_path.get(scope["path"], self.default)
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        if declared is not None and declared > limit:
            return await _send_error(send, BodyTooLarge(limit))
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as err:
            if started:
                raise
            await _send_error(send, err)


async def _send_error(send: Send, err: StarletteHTTPException) -> None:
    import json

    body = json.dumps({"error": err.detail, "detail": err.detail}).encode()
    await send({"type": "http.response.start", "status": err.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


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


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        for e in errors:
            e.pop("input", None)  # may be megabytes of the caller's own text
            e.pop("url", None)
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
        return JSONResponse({"error": str(exc.detail), "detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))


# ---- the app ---------------------------------------------------------------------------------

def create_app(model: Any = None, *, limits: Limits | None = None, captioner: Captioner | None = None,
               device: str = "cpu", int8: bool = False) -> FastAPI:
    """A FastAPI app serving `model`: a run directory (or checkpoint directory), a LoadedRun, or a
    Translator; `captioner` adds /caption (a captioning run directory loads one by itself). With
    `int8`, the translator decodes with int8 linear layers (attnlab.quantize; CPU); a Translator passed
    in is left as it is."""
    from contextlib import asynccontextmanager

    from attnlab import __version__

    limits = limits or Limits()
    translator, loaded_captioner, meta = _load(model, device)
    if int8:
        if translator is None:
            raise ValueError("int8 serving applies to translation models; this run holds none")
        translator = Translator(translator.model, translator.tokenizers, translator.device,
                                translator.meta).quantize_int8()
    captioner = captioner or loaded_captioner
    if translator is None and captioner is None:
        raise ValueError("create_app needs a model to serve: a run directory, a Translator, or a captioner")
    service = Service(translator, captioner, meta, limits)
    TranslateRequest = _request_model(limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.stop()
        service.model_thread.shutdown()

    app = FastAPI(title="attnlab", version=__version__, lifespan=lifespan,
                  description="Translate with a Transformer and look at its attention; caption images.")
    app.state.service = service
    app.add_middleware(BodyLimit, default=limits.max_body_bytes,
                       per_path={"/caption": limits.max_image_bytes + 64 * 1024})
    _install_error_handlers(app)

    @app.post("/translate", response_model=TranslateResponse, responses=ERRORS,
              summary="Translate one sentence or a list of sentences")
    async def translate(req: TranslateRequest) -> TranslateResponse:  # type: ignore[valid-type]
        start = time.perf_counter()
        if service.translator is None:
            raise HTTPException(404, "this server's model is a captioner, not a translator: use POST /caption")
        sentences: list[str] = req.text
        if req.attention and len(sentences) > limits.max_attention_sentences:
            raise HTTPException(422, f"attention weights can be returned for at most "
                                     f"{limits.max_attention_sentences} sentences per request, got {len(sentences)}")
        if req.attention and not hasattr(service.translator.model, "attention_maps"):
            raise HTTPException(404, f"the {service.meta.get('arch', 'loaded')} model does not provide attention maps")
        real = [i for i, s in enumerate(sentences) if s.strip()]
        encoded = [service.encode(sentences[i]) for i in real]
        try:
            outputs = await _with_timeout(service.batcher.submit([ids for ids, _ in encoded], req.beam),
                                          limits.request_timeout_s)
        except Overloaded as err:
            raise HTTPException(503, f"the server is busy: {err}; retry shortly", headers={"Retry-After": "1"}) from None
        tok_tgt = service.translator.tokenizers.tgt
        translations = [""] * len(sentences)
        for i, out in zip(real, outputs):
            translations[i] = tok_tgt.decode(out)
        attention = None
        if req.attention:
            def maps() -> list[dict]:
                return [service.cross_attention(ids, out) for (ids, _), out in zip(encoded, outputs)]

            computed = await service.model_thread.run(maps)
            attention = [None] * len(sentences)
            for i, a in zip(real, computed):
                attention[i] = a
        return TranslateResponse(translations=translations, beam=req.beam, attention=attention,
                                 truncated=[i for i, (_, cut) in zip(real, encoded) if cut],
                                 elapsed_ms=round(1000 * (time.perf_counter() - start), 2))

    @app.post("/caption", response_model=CaptionResponse, responses=ERRORS, summary="Caption an uploaded image")
    async def caption(image: Annotated[UploadFile, File(description="an image file (PNG, JPEG, ...)")],
                      beam: Annotated[int, Form(ge=1, le=limits.max_beam)] = 1) -> CaptionResponse:
        start = time.perf_counter()
        if service.captioner is None:
            raise HTTPException(404, f"this server's model ({service.meta.get('arch', 'a translator')}) is not "
                                     "an image captioner: use POST /translate")
        data = await image.read(limits.max_image_bytes + 1)
        if len(data) > limits.max_image_bytes:
            raise HTTPException(413, f"the image is larger than the limit of {limits.max_image_bytes} bytes")
        try:
            width, height, _ = check_image(data, limits.max_image_pixels)
        except BadImage as err:
            raise HTTPException(413 if err.too_large else 400, str(err)) from None
        try:
            result = await _with_timeout(service.model_thread.run(service.captioner.caption, data, beam),
                                         limits.request_timeout_s)
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for images it cannot decode
            raise HTTPException(400, f"could not read the image: {err}") from None
        return CaptionResponse(**result, width=width, height=height,
                               elapsed_ms=round(1000 * (time.perf_counter() - start), 2))

    @app.get("/health", response_model=Health, summary="Model, limits, batching counters, uptime")
    async def health() -> Health:
        return Health(version=__version__, uptime_s=round(time.monotonic() - service.started, 3),
                      capabilities={"translate": service.translator is not None,
                                    "caption": service.captioner is not None},
                      model=service.model_info(), limits=asdict(limits), batching=service.batcher.stats.to_dict())

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _with_timeout(awaitable: Any, seconds: float) -> Any:
    import asyncio

    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise HTTPException(503, f"the model did not answer within {seconds:g} s; retry later",
                            headers={"Retry-After": "5"}) from None
