"""attnlab serve: an HTTP JSON API and a web page for a trained model.

POST /translate, POST /caption (captioning models), GET /health, /ready, /metrics, /openapi.json
(and /docs with --docs), and the page at /. Needs the `serve` extra: pip install 'attnlab[serve]'.

Place in the layering: commands; imports only from serve and bench and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over HTTP (JSON API and a web page)", description=__doc__)
    p.add_argument("--model", required=True, help="run directory written by 'attnlab train' (or a checkpoint)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--int8", action="store_true",
                   help="decode with int8 linear layers (CPU only; BLEU and speed: benchmarks/, README)")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch", type=int, default=32, help="sentences per batched decoding call (1 = no batching)")
    g.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a request waits for others to batch with")
    g = p.add_argument_group("limits (requests beyond them get a 4xx with a message)")
    g.add_argument("--max-sentences", type=int, default=64, help="sentences per /translate request")
    g.add_argument("--max-chars", type=int, default=1000, help="characters per sentence")
    g.add_argument("--max-beam", type=int, default=8)
    g.add_argument("--max-attention-sentences", type=int, default=8, help="sentences per request with attention")
    g.add_argument("--max-src-tokens", type=int, default=256, help="longer inputs are cut (and reported)")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20, help="JSON request body size")
    g.add_argument("--max-image-bytes", type=int, default=8 << 20, help="uploaded image size")
    g.add_argument("--max-queue", type=int, default=2048, help="sentences waiting for the model before 503 (busy)")
    g.add_argument("--max-work", type=int, default=4_000_000,
                   help="per request: sum over sentences of source tokens x beam x longest output (else 413)")
    g.add_argument("--max-response-mb", type=float, default=2.0, help="larger answers are refused (413), saying "
                                                                      "how to ask for less")
    g.add_argument("--request-timeout", type=float, default=120.0, help="seconds before a request gets a 504")
    g.add_argument("--interactive-work", type=int, default=50_000,
                   help="requests up to this much work take the interactive lane; larger ones run in chunks "
                        "of this size beside it")
    g = p.add_argument_group("access")
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (not on /health, /ready, "
                                                   "the page); default: the ATTNLAB_API_KEY environment variable")
    g.add_argument("--allowed-hosts", default=None,
                   help="comma-separated Host names served, e.g. 'mt.example.org,*.example.org' (else 400)")
    g.add_argument("--docs", action="store_true", help="serve FastAPI's /docs page (it loads Swagger UI from a CDN)")
    g.add_argument("--proxy-headers", action="store_true",
                   help="behind a TLS proxy: trust X-Forwarded-Proto/For from --forwarded-allow-ips")
    g.add_argument("--forwarded-allow-ips", default="127.0.0.1", help="proxies trusted with --proxy-headers")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def missing_dependencies() -> list[str]:
    wanted = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart",
              "prometheus_client": "prometheus-client"}
    return [pkg for module, pkg in wanted.items() if importlib.util.find_spec(module) is None]


def run(args: argparse.Namespace) -> int:
    from attnlab.device import parse_device

    missing = missing_dependencies()
    if missing:
        raise RuntimeError(f"serving needs {', '.join(missing)}: pip install 'attnlab[serve]'")
    import torch
    import uvicorn

    from attnlab.serve import Limits, create_app

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    limits = Limits(max_body_bytes=args.max_body_bytes, max_image_bytes=args.max_image_bytes,
                    max_sentences=args.max_sentences, max_chars=args.max_chars, max_beam=args.max_beam,
                    max_attention_sentences=args.max_attention_sentences, max_src_tokens=args.max_src_tokens,
                    max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                    max_work=args.max_work, max_response_mb=args.max_response_mb,
                    request_timeout_s=args.request_timeout, interactive_work=args.interactive_work)
    api_key = args.api_key or os.environ.get("ATTNLAB_API_KEY") or None
    hosts = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()] if args.allowed_hosts else None
    app = create_app(args.model, limits=limits, device=str(parse_device(args.device)), int8=args.int8,
                     api_key=api_key, allowed_hosts=hosts, docs=args.docs)
    docs = " (API docs at /docs)" if args.docs else ""
    print(f"attnlab serve: {args.model} on http://{args.host}:{args.port}/{docs}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.log_level == "debug",
                timeout_keep_alive=5, timeout_graceful_shutdown=5, proxy_headers=args.proxy_headers,
                forwarded_allow_ips=args.forwarded_allow_ips, server_header=False)
    return 0
