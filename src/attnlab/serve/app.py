"""The HTTP service: `create_app(run_dir) -> FastAPI`.

    POST /translate   {"text": "a sentence" | ["one", "or many"], "beam": 1,
                       "attention": false | true | {"layers", "heads", "sentences", "format"}}
                      -> {"translations": [...], "attention": [per sentence: cross-attention] | null}
    POST /caption     multipart form: image=<file>, beam=1, attention=true -> {"caption", "words", "attention", "grid"}
    GET  /health      at once: model loaded, queue depth, model, limits, batching counters, uptime
    GET  /ready       200 while the queue has room, 503 when it is full
    GET  /metrics     Prometheus text (metrics.py)
    GET  /            the web page (static/); /openapi.json; /docs only with docs=True (it loads a CDN)

The model loads once, in `create_app`. Every model call (translations, attention maps, captions)
goes through one bounded queue (batcher.py). What a request may cost is checked before any work:
its work budget (payload.py) and the size of its answer (`max_response_mb`); then it has
`request_timeout_s` (504), and work for a client that has gone away is dropped. Bad input is a 4xx
with a one-line `error` (and `detail`); a failure of the model on one request is a JSON 500 for
that request only; nothing answers with anything but JSON, except the page and /metrics.

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from attnlab.layers.int8 import Int8Linear
from attnlab.models.registry import supports
from attnlab.serve import payload
from attnlab.serve.batcher import MicroBatcher, Overloaded
from attnlab.serve.captioner import BadImage, Captioner, check_image, load_captioner
from attnlab.serve.errors import Refused, install_error_handlers
from attnlab.serve.metrics import Metrics
from attnlab.serve.middleware import ApiKey, BodyLimit, Guard, HostCheck
from attnlab.serve.schemas import (
    ERRORS,
    CaptionResponse,
    Health,
    Limits,
    TranslateResponse,
    request_model,
)
from attnlab.translate import DecodeConfig, Translator, source_ids

log = logging.getLogger("attnlab.serve")
STATIC = Path(__file__).parent / "static"
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")


class Service:
    """The loaded model(s), the queue, the metrics; one per app."""

    def __init__(self, translator: Translator | None, captioner: Captioner | None, meta: dict, limits: Limits):
        self.translator, self.captioner, self.meta, self.limits = translator, captioner, meta, limits
        self.started = time.monotonic()
        self.metrics = Metrics(lambda: self.batcher.waiting)
        self.batcher = MicroBatcher(self._decode, limits.max_batch, limits.batch_wait_ms, limits.max_queue,
                                    work_of=payload.sentence_work, small_work=limits.interactive_work,
                                    chunk_work=limits.interactive_work, on_batch=self.metrics.observe_batch)
        self.attention_shape = self._attention_shape()  # (decoder layers, heads), None without attention
        self.info = self._model_info()

    def _decode(self, sources: list[list[int]], beam: int) -> list[list[int]]:
        """Model thread: one batched decoding call. Each output is cut to its own sentence's length
        limit (a*S + b) so that a result does not depend on which batch it landed in."""
        assert self.translator is not None
        cfg = DecodeConfig(beam=beam, max_src_len=self.limits.max_src_tokens)
        outputs = self.translator.translate_ids(sources, cfg)
        return [(hyps[0] if hyps else [])[: payload.max_target_len(len(src), cfg)]
                for hyps, src in zip(outputs, sources)]

    def encode(self, text: str) -> tuple[list[int], bool]:
        assert self.translator is not None
        ids = source_ids(self.translator.tokenizers, text)
        if len(ids) <= self.limits.max_src_tokens:
            return ids, False
        return ids[: self.limits.max_src_tokens - 1] + [ids[-1]], True

    def _attention_shape(self) -> tuple[int, int] | None:
        """The registry says whether the model's family has attention to show; its shape from one tiny
        teacher-forced pass."""
        tr = self.translator
        if tr is None or not supports(self.meta.get("arch", "transformer"), "attention_maps"):
            return None
        model = tr.model
        src = torch.tensor([[tr.eos_id]], device=tr.device)
        cross = model.attention_maps(src, torch.tensor([[tr.bos_id]], device=tr.device))["cross"]  # (L, 1, H, 1, 1)
        return int(cross.shape[0]), int(cross.shape[2])

    def cross_attention(self, src_ids: list[int], out_ids: list[int], layer_index: list[int],
                        head_index: list[int] | None, fmt: str) -> dict[str, Any]:
        """Model thread: teacher-forced pass over the decoded output, as `attnlab attention` does."""
        tr = self.translator
        assert tr is not None and self.attention_shape is not None
        src = torch.tensor([src_ids], device=tr.device)
        tgt_in = torch.tensor([[tr.bos_id] + out_ids], device=tr.device)
        cross = tr.model.attention_maps(src, tgt_in)["cross"][:, 0].float().cpu()  # (L, H, T, S)
        tok_src, tok_tgt = tr.tokenizers.src, tr.tokenizers.tgt
        return {"source_tokens": [tok_src.id_to_token(i) for i in src_ids],
                "target_tokens": [tok_tgt.id_to_token(i) for i in out_ids] + ["</s>"],
                "layers": self.attention_shape[0], "heads": self.attention_shape[1],
                **payload.encode_weights(cross, layer_index, head_index, fmt)}

    def _model_info(self) -> dict[str, Any]:
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
            info["attention"] = self.attention_shape is not None
            if self.attention_shape is not None:
                info["attention_shape"] = {"layers": self.attention_shape[0], "heads": self.attention_shape[1]}
            info["device"] = str(self.translator.device)
        task = self.meta.get("task")
        if isinstance(task, dict) and task.get("task"):
            info["task"] = task["task"]
        return info

    async def within_deadline(self, request: Request, work: Awaitable[Any]) -> Any:
        """Await `work` until the request's deadline (then 504) or until its client goes away (then
        the work is cancelled: queued jobs are dropped, a bulk job stops at its next chunk)."""
        task = asyncio.ensure_future(work)

        async def client_gone() -> None:
            while not await request.is_disconnected():
                await asyncio.sleep(0.1)

        watcher = asyncio.ensure_future(client_gone())
        try:
            done, _ = await asyncio.wait({task, watcher}, timeout=self.limits.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if task in done:
            return task.result()
        task.cancel()
        if watcher in done:
            raise Refused(499, "the client closed the request; its work was cancelled", "disconnected")
        raise Refused(504, f"no answer within the request timeout of {self.limits.request_timeout_s:g} s; "
                           "retry later or ask for less", "timeout", headers={"Retry-After": "5"})

    async def queued(self, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except Overloaded as err:
            raise Refused(503, f"the server is busy: {err}; retry shortly", "busy", headers={"Retry-After": "1"}) from None


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
        if supports(meta["arch"], "captioning"):
            return None, load_captioner(path, device), meta
        run = load_run(path, device)
        return Translator(run.model, run.tokenizers, device, run.meta), None, dict(run.meta)
    raise TypeError(f"create_app: expected a run directory, LoadedRun or Translator, got {type(model).__name__}")


def _json(body: dict[str, Any], cap: int, hint: str) -> Response:
    """The answer as JSON bytes, or a 413 when it would pass the cap."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    if len(data) > cap:
        raise Refused(413, payload.too_large(len(data), cap, "") + hint, "response_cap")
    return Response(data, media_type="application/json")


# ---- the app ---------------------------------------------------------------------------------

def create_app(model: Any = None, *, limits: Limits | None = None, captioner: Captioner | None = None,
               device: str = "cpu", int8: bool = False, api_key: str | None = None,
               allowed_hosts: list[str] | None = None, docs: bool = False) -> FastAPI:
    """A FastAPI app serving `model`: a run directory (or checkpoint directory), a LoadedRun, or a
    Translator; `captioner` adds /caption (a captioning run directory loads one by itself). With
    `int8`, the translator decodes with int8 linear layers (attnlab.quantize; CPU); a Translator passed
    in is left as it is. `api_key`: requests need `Authorization: Bearer KEY` (not /health, /ready,
    the page); `allowed_hosts`: Host header names served; `docs`: FastAPI's /docs (Swagger UI from
    its CDN)."""
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
    n_layers, n_heads = service.attention_shape or (1, 1)
    TranslateRequest = request_model(limits, n_layers, n_heads)
    cap = limits.max_response_bytes
    metrics = service.metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="attnlab", version=__version__, lifespan=lifespan, docs_url="/docs" if docs else None,
                  redoc_url=None, description="Translate with a Transformer and look at its attention; caption images.")
    app.state.service = service
    # added innermost first: Guard ends up outermost
    app.add_middleware(BodyLimit, default=limits.max_body_bytes, reject=metrics.reject,
                       per_path={"/caption": limits.max_image_bytes + 64 * 1024})
    if api_key:
        app.add_middleware(ApiKey, key=api_key, reject=metrics.reject)
    if allowed_hosts:
        app.add_middleware(HostCheck, allowed_hosts=allowed_hosts, reject=metrics.reject)
    app.add_middleware(Guard, observe=metrics.observe_request, docs_paths=("/docs",) if docs else ())
    install_error_handlers(app, metrics)

    @app.post("/translate", response_model=TranslateResponse, responses=ERRORS,
              summary="Translate one sentence or a list of sentences")
    async def translate(req: TranslateRequest, request: Request) -> Response:  # type: ignore[valid-type]
        start = time.perf_counter()
        if service.translator is None:
            raise HTTPException(404, "this server's model is a captioner, not a translator: use POST /caption")
        sentences: list[str] = req.text
        beam = req.beam if req.beam is not None else min(service.translator.defaults["beam"], limits.max_beam)
        sel = None if isinstance(req.attention, bool) else req.attention
        if req.attention is not False and service.attention_shape is None:
            raise Refused(422, f"the {service.meta.get('arch', 'loaded')} model has no attention to return "
                               "(a fixed-context model): send \"attention\": false", "no_attention")
        wanted: list[int] = []
        if req.attention is not False:
            wanted = list(dict.fromkeys(sel.sentences)) if sel is not None and sel.sentences else list(
                range(len(sentences)))
            if len(wanted) > limits.max_attention_sentences:
                raise Refused(422, f"attention weights can be returned for at most {limits.max_attention_sentences}"
                                   f" sentences per request, got {len(wanted)}", "attention_sentences")
            if any(i >= len(sentences) for i in wanted):
                raise Refused(422, f"attention.sentences: indices must be below the {len(sentences)} sentences "
                                   "sent", "invalid")
        # tokenizing 64 x 1000 characters takes a while: not on the event loop, which answers /health
        encoded = await asyncio.to_thread(lambda: [service.encode(s) if s.strip() else None for s in sentences])
        work = sum(payload.sentence_work(e[0], beam) for e in encoded if e)
        if work > limits.max_work:
            raise Refused(413, f"this request needs {work:,} units of work (source tokens x beam x longest output, "
                               f"summed over sentences); the limit is {limits.max_work:,}: send fewer or shorter "
                               "sentences or a smaller beam", "work_budget")
        fmt = sel.format if sel is not None else "json"
        layer_index, head_index = payload.selection(sel, n_layers, n_heads)
        heads_out = 1 if head_index is None else len(head_index)
        size = sum(payload.max_target_len(len(e[0])) * payload.BYTES_PER_TOKEN for e in encoded if e) + 200
        size += sum(payload.attention_bytes(len(e[0]), payload.max_target_len(len(e[0])) + 1, len(layer_index),
                                            heads_out, fmt) for i in wanted if (e := encoded[i]))
        if size > cap:
            raise Refused(413, payload.too_large(size, cap, " at most") + payload.TRANSLATE_HINT, "response_cap")
        real = [i for i, e in enumerate(encoded) if e]

        async def run() -> tuple[list[list[int]], dict[int, dict]]:
            outputs = await service.queued(service.batcher.submit([encoded[i][0] for i in real], beam))
            by_index = dict(zip(real, outputs))
            maps = {}
            for i in wanted:  # one queued job per sentence: a bulk lane may yield between them
                if i in by_index:
                    src = encoded[i][0]
                    maps[i] = await service.queued(service.batcher.call(
                        service.cross_attention, src, by_index[i], layer_index, head_index, fmt,
                        work=len(src) * (len(by_index[i]) + 1) * n_layers))
            return outputs, maps

        outputs, maps = await service.within_deadline(request, run())
        tok_tgt = service.translator.tokenizers.tgt
        translations = [""] * len(sentences)
        for i, out in zip(real, outputs):
            translations[i] = tok_tgt.decode(out)
        attention = None
        if req.attention is not False:
            attention = [maps.get(i) for i in range(len(sentences))]
        body = {"translations": translations, "beam": beam, "attention": attention,
                "truncated": [i for i in real if encoded[i][1]],
                "elapsed_ms": round(1000 * (time.perf_counter() - start), 2)}
        return _json(body, cap, payload.TRANSLATE_HINT)

    @app.post("/caption", response_model=CaptionResponse, responses=ERRORS, summary="Caption an uploaded image")
    async def caption(request: Request,
                      image: Annotated[UploadFile, File(description=f"an image file ({', '.join(IMAGE_FORMATS)})")],
                      beam: Annotated[int, Form(ge=1, le=limits.max_beam)] = 1,
                      attention: Annotated[bool, Form(description="return per-word attention")] = True) -> Response:
        start = time.perf_counter()
        if service.captioner is None:
            raise HTTPException(404, f"this server's model ({service.meta.get('arch', 'a translator')}) is not "
                                     "an image captioner: use POST /translate")
        data = await image.read(limits.max_image_bytes + 1)
        if len(data) > limits.max_image_bytes:
            raise Refused(413, f"the image is larger than the limit of {limits.max_image_bytes} bytes", "image_size")
        try:
            width, height, fmt = check_image(data, limits.max_image_pixels)
        except BadImage as err:
            raise Refused(413 if err.too_large else 400, str(err), "image_size" if err.too_large else "bad_image") \
                from None
        if fmt not in IMAGE_FORMATS:
            raise Refused(415, f"{fmt} images are not accepted; send {', '.join(IMAGE_FORMATS)}", "image_format")
        try:
            result = await service.within_deadline(request, service.queued(
                service.batcher.call(service.captioner.caption, data, beam, work=0)))
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for images it cannot decode
            raise Refused(400, f"could not read the image: {err}", "bad_image") from None
        if not attention:
            result = {**result, "attention": None}
        body = {**result, "width": width, "height": height, "elapsed_ms": round(1000 * (time.perf_counter() - start), 2)}
        return _json(body, cap, payload.CAPTION_HINT)

    @app.get("/health", response_model=Health, summary="At once: model loaded, queue depth, limits, counters")
    async def health() -> Health:
        return Health(version=__version__, uptime_s=round(time.monotonic() - service.started, 3), model_loaded=True,
                      queue={"waiting": service.batcher.waiting, "max_queue": limits.max_queue,
                             "full": service.batcher.full},
                      capabilities={"translate": service.translator is not None,
                                    "caption": service.captioner is not None}, api_key_required=bool(api_key),
                      model=service.info, limits=asdict(limits), batching=service.batcher.stats.to_dict())

    @app.get("/ready", summary="200 while the queue has room, 503 when it is full", responses=ERRORS)
    async def ready() -> JSONResponse:
        body = {"ready": not service.batcher.full, "waiting": service.batcher.waiting, "max_queue": limits.max_queue}
        if service.batcher.full:
            return JSONResponse({**body, "error": "the queue is full"}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse(body)

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
