"""Support for the serve tests: a tiny trained model, a server in a subprocess, a load generator.

`write_tiny_run(DIR)` builds a translator (dates, English -> German) directly rather than through
`attnlab train`, so the tests stay fast (~5 s): a 200-token BPE vocabulary, the `test` preset
(d_model=32, 2 layers, 4 heads) and 150 Adam steps, enough for the model to translate dates.

    python tests/serve/serve_support.py model DIR                # write the tiny run
    python tests/serve/serve_support.py load URL [-n 200 -c 50]  # load a running server, JSON out
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import attnlab

from attnlab.config import TransformerConfig
from attnlab.data.generated import dates_task
from attnlab.data.tokenizer import TokenizerPair
from attnlab.models.transformer import Transformer
from attnlab.run_dir import write_run_config
from attnlab.training.checkpoint import save_weights
from attnlab.training.loss import label_smoothed_nll


REPORT: list[str] = []  # lines for the pytest terminal summary (see conftest.py)


def pad_batch(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows])


def write_tiny_run(out: str | Path, steps: int = 150, seed: int = 0) -> Path:
    out = Path(out)
    torch.manual_seed(seed)
    pairs = dates_task(2000, seed=seed)
    tok = TokenizerPair.train(pairs, vocab_size=200, joint=True)
    cfg = TransformerConfig.preset("test", src_vocab_size=tok.src.vocab_size, tgt_vocab_size=tok.tgt.vocab_size,
                                   share_embeddings=True, pad_id=tok.src.pad_id)
    model = Transformer(cfg)
    src = [tok.src.encode(s) + [tok.src.eos_id] for s, _ in pairs]
    tgt = [[tok.tgt.bos_id] + tok.tgt.encode(t) + [tok.tgt.eos_id] for _, t in pairs]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest
    try:
        model.train()
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(len(pairs), (64,), generator=g).tolist()
            s, t = pad_batch([src[i] for i in idx], cfg.pad_id), pad_batch([tgt[i] for i in idx], cfg.pad_id)
            loss, _ = label_smoothed_nll(model(s, t[:, :-1]), t[:, 1:], cfg.pad_id, 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    write_run_config(out, "transformer", cfg.to_dict(), {"task": "dates"}, {"max_steps": steps},
                     {"kind": "subword", "joint": True})
    save_weights(model, out / "model.safetensors")
    tok.save(out)
    return out


def write_random_run(out: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """An untrained model of a given preset (same tokenizer as the tiny run): its outputs are noise
    that runs to the length limit, which makes decoding cost dominate, as with a real model."""
    out = Path(out)
    torch.manual_seed(seed)
    tok = TokenizerPair.train(dates_task(2000, seed=seed), vocab_size=200, joint=True)
    cfg = TransformerConfig.preset(preset, src_vocab_size=tok.src.vocab_size, tgt_vocab_size=tok.tgt.vocab_size,
                                   share_embeddings=True, pad_id=tok.src.pad_id, dropout=0.0)
    write_run_config(out, "transformer", cfg.to_dict(), {"task": "dates"}, {}, {"kind": "subword", "joint": True})
    save_weights(Transformer(cfg).eval(), out / "model.safetensors")
    tok.save(out)
    return out


class FakeCaptioner:
    """Stands in for a captioning model: reads the image (so unreadable files fail as they would),
    and answers with fixed words, each attending to a different region of a 3x4 grid."""

    words = ["a", "dog", "runs", "on", "grass"]
    grid = [3, 4]

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def caption(self, image_bytes: bytes, beam: int) -> dict:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(image_bytes)) as img:
            img.convert("RGB").load()
        self.calls.append((len(image_bytes), beam))
        cells = self.grid[0] * self.grid[1]
        attention = []
        for i, _ in enumerate(self.words):
            row = [0.02] * cells
            row[(3 * i) % cells] += 1.0 - 0.02 * cells
            attention.append(row)
        return {"caption": " ".join(self.words), "words": self.words, "attention": attention, "grid": self.grid}


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 160, 90)).save(buf, format="PNG")
    return buf.getvalue()


# ---- a server in a subprocess ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m attnlab serve` on a free loopback port, this checkout's attnlab first on the path."""

    def __init__(self, run: Path, *args: str, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(attnlab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
        self.log = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attnlab", "serve", "--model", str(run), "--port", str(self.port),
             "--log-level", "warning", *args], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> "Server":
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"attnlab serve exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"attnlab serve did not answer on {self.url} within {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


# ---- load --------------------------------------------------------------------------------------

def date_sentences(n: int, seed: int = 1) -> list[str]:
    return [src for src, _ in dates_task(n, seed=seed)]


class _Connection:
    """A minimal keep-alive HTTP/1.1 client connection to the test server (Content-Length bodies only).

    The load generator needs a client much cheaper than the server it measures: on a 2-core machine
    httpx's per-request cost capped the measured throughput at ~150 req/s and put its own queueing
    into the tail latency, while this client measured the same server at ~500 req/s."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, payload: object = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        body = b"" if payload is None else json.dumps(payload).encode()
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(lines[0].split()[1]), data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def load(url: str, n_requests: int = 200, concurrency: int = 50, seed: int = 1, timeout: float = 60.0,
               require_text: bool = True, payload=None, expect: dict[str, str] | None = None) -> dict:
    """POST /translate n_requests times (one sentence each, or `payload(i, sentence)`) over
    `concurrency` keep-alive connections, each sending its next request when the last is answered
    (so `concurrency` requests are in flight); returns throughput, latency percentiles and failures
    (any status but 200, a transport error or timeout, with `require_text` an empty translation, or
    a translation other than `expect[sentence]`)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    todo = list(enumerate(date_sentences(n_requests, seed)))[::-1]
    latencies: list[float] = []
    failures: list[str] = []

    async def worker() -> None:
        conn = _Connection(host, int(port))
        while todo:
            i, text = todo.pop()
            start = time.perf_counter()
            try:
                status, data = await asyncio.wait_for(
                    conn.request("POST", "/translate", payload(i, text) if payload else {"text": text}), timeout)
                got = json.loads(data)["translations"][0] if status == 200 else None
                if status != 200 or (require_text and not got) or (expect and got != expect[text]):
                    failures.append(f"{text!r}: {status}: {data[:200]!r}")
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as err:
                failures.append(f"{type(err).__name__}: {err}")
                conn.close()
            latencies.append(time.perf_counter() - start)
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    conn = _Connection(host, int(port))
    stats = json.loads((await conn.request("GET", "/health"))[1])["batching"]
    conn.close()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"requests": n_requests, "concurrency": concurrency, "failures": len(failures),
            "failure_examples": failures[:3], "wall_s": round(wall, 3),
            "throughput_rps": round(n_requests / wall, 1), "p50_ms": round(1000 * q[49], 1),
            "p99_ms": round(1000 * q[98], 1), "max_ms": round(1000 * max(latencies), 1), "server_batching": stats}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("model").add_argument("dir")
    lp = sub.add_parser("load")
    lp.add_argument("url")
    lp.add_argument("-n", type=int, default=200)
    lp.add_argument("-c", type=int, default=50)
    a = ap.parse_args()
    if a.what == "model":
        print(write_tiny_run(a.dir))
    else:
        print(json.dumps(asyncio.run(load(a.url, a.n, a.c)), indent=2))
