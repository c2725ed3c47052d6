"""Load and abuse test of `attnlab serve` (asyncio + httpx), against a server it starts in a subprocess.

    python benchmarks/serve_abuse.py --model /tmp/serve-model --duration 600 --out benchmarks/results/serve_abuse.json

1. idle: one-sentence /translate, one at a time: its median latency is the reference.
2. under maximal load (the issue's "done when"): three maximal requests running (4 sentences of
   256 tokens, beam 8, attention of the last layer's mean head in float16: the most the default work
   budget and answer cap allow) while /health and a one-sentence /translate are sent one at a time.
3. mixed, for --duration seconds: normal clients (one sentence; some beam 2, some with the page's
   attention), clients repeating maximal requests, an abuse client (over the work budget, over the
   answer cap, malformed JSON, a body over the limit, a 400-megapixel-header PNG to /caption,
   attention sentence indices out of range), a client that sends maximal requests and hangs up
   after 0.5 s (its work must be cancelled), /health every 0.5 s, the server's RSS every 5 s.

Counts every answer that is lost (transport error or no answer in 300 s), not JSON, a 5xx, or over
the answer cap. JSON out (--out), with the machine; a markdown table on stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from attnlab.bench.common import write_report
from attnlab.data.generated import dates_task

CAP = 2_000_000
LONG = " ".join(src for src, _ in dates_task(200, seed=5))[:1000]  # 1000 characters: over 256 tokens, cut
MAXIMAL = {"text": [LONG] * 4, "beam": 8, "attention": {"layers": "last", "heads": "mean", "format": "f16"}}
ABUSE = [  # (name, method, path, kwargs, expected status)
    ("over the work budget", "POST", "/translate", {"json": {"text": [LONG] * 64, "beam": 8}}, 413),
    ("over the answer cap", "POST", "/translate", {"json": {"text": [LONG] * 8, "attention": True}}, 413),
    ("malformed JSON", "POST", "/translate", {"content": b'{"text": "a', "headers": {"content-type": "application/json"}}, 400),
    ("body over 1 MiB", "POST", "/translate", {"content": b'{"text": "' + b"a" * 1_100_000 + b'"}',
                                               "headers": {"content-type": "application/json"}}, 413),
    ("caption on a translator", "POST", "/caption", {"files": {"image": ("x.png", b"\x89PNG", "image/png")}}, 404),
    ("attention index out of range", "POST", "/translate", {"json": {"text": ["a"], "attention": {"sentences": [5]}}}, 422),
]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1)


class Tally:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.status: dict[str, dict[str, int]] = {}
        self.lost = self.not_json = self.server_errors = self.over_cap = self.unexpected = 0
        self.examples: list[str] = []

    def note(self, kind: str, problem: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(f"{kind}: {problem}")

    async def send(self, client: httpx.AsyncClient, kind: str, method: str, path: str, expect: int | None = None,
                   **kwargs) -> httpx.Response | None:
        start = time.perf_counter()
        try:
            r = await client.request(method, path, timeout=300, **kwargs)
        except httpx.HTTPError as err:
            self.lost += 1
            self.note(kind, f"lost: {type(err).__name__} {err}")
            return None
        self.latency.setdefault(kind, []).append(time.perf_counter() - start)
        counts = self.status.setdefault(kind, {})
        counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1
        if path != "/metrics":
            try:
                r.json()
            except ValueError:
                self.not_json += 1
                self.note(kind, f"not JSON: {r.status_code} {r.text[:100]!r}")
        if r.status_code >= 500:
            self.server_errors += 1
            self.note(kind, f"{r.status_code}: {r.text[:200]}")
        if len(r.content) > CAP:
            self.over_cap += 1
        if expect is not None and r.status_code != expect:
            self.unexpected += 1
            self.note(kind, f"expected {expect}, got {r.status_code}: {r.text[:200]}")
        return r


def start_server(model: str, port: int, threads: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-m", "attnlab", "serve", "--model", model, "--port", str(port),
                             "--threads", str(threads), "--log-level", "warning"], env=env)


async def wait_ready(client: httpx.AsyncClient, proc: subprocess.Popen) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if (await client.get("/health", timeout=2)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the server did not start")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def one_at_a_time(t: Tally, c: httpx.AsyncClient, kind: str, stop: float, sentences: list[str],
                        gap: float = 0.0, **extra) -> None:
    while time.monotonic() < stop:
        await t.send(c, kind, "POST", "/translate", 200, json={"text": random.choice(sentences), **extra})
        await asyncio.sleep(gap)


async def health_probe(t: Tally, c: httpx.AsyncClient, kind: str, stop: float, every: float) -> None:
    while time.monotonic() < stop:
        await t.send(c, kind, "GET", "/health", 200)
        await asyncio.sleep(every)


async def repeat(t: Tally, c: httpx.AsyncClient, kind: str, stop: float, payload: dict) -> None:
    while time.monotonic() < stop:
        await t.send(c, kind, "POST", "/translate", None, json=payload)


async def abuse(t: Tally, c: httpx.AsyncClient, stop: float) -> None:
    while time.monotonic() < stop:
        for name, method, path, kwargs, status in ABUSE:
            await t.send(c, "abuse: " + name, method, path, status, **kwargs)
        await asyncio.sleep(0.2)


async def hang_up(t: Tally, url: str, stop: float) -> int:
    n = 0
    while time.monotonic() < stop:
        async with httpx.AsyncClient(base_url=url) as c:
            try:
                await c.post("/translate", json=MAXIMAL, timeout=0.5)
            except httpx.TimeoutException:
                n += 1
        await asyncio.sleep(2)
    return n


async def rss_sampler(pid: int, start: float, stop: float, out: list) -> None:
    while time.monotonic() < stop:
        out.append((round(time.monotonic() - start, 1), round(rss_mib(pid), 1)))
        await asyncio.sleep(5)


def summary(t: Tally) -> dict:
    return {kind: {"n": len(v), "p50_ms": pct(v, 0.5), "p95_ms": pct(v, 0.95), "p99_ms": pct(v, 0.99),
                   "max_ms": pct(v, 1.0), "status": t.status.get(kind, {})} for kind, v in sorted(t.latency.items())}


async def main(a: argparse.Namespace) -> dict:
    port = a.port or random.randint(20000, 40000)
    url = f"http://127.0.0.1:{port}"
    proc = start_server(a.model, port, a.threads)
    sentences = [s for s, _ in dates_task(500, seed=11)]
    try:
        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=64)) as c, \
                httpx.AsyncClient(base_url=url) as probe:
            await wait_ready(c, proc)
            warm = Tally()
            await one_at_a_time(warm, c, "warm-up", time.monotonic() + 5, sentences)
            await warm.send(c, "warm-up maximal", "POST", "/translate", 200, json=MAXIMAL)
            idle = Tally()
            await one_at_a_time(idle, probe, "translate", time.monotonic() + a.idle_s, sentences, gap=0.05)
            await health_probe(idle, probe, "health", time.monotonic() + 5, 0.1)

            # the check: three maximal requests running, /health and a one-sentence /translate
            loaded = Tally()
            stop = time.monotonic() + a.loaded_s
            maximal = [asyncio.ensure_future(repeat(loaded, c, "maximal", stop, MAXIMAL)) for _ in range(3)]
            await asyncio.sleep(1.0)  # let them start
            await asyncio.gather(one_at_a_time(loaded, probe, "translate", stop, sentences, gap=0.2),
                                 health_probe(loaded, c, "health", stop, 0.25), *maximal)

            # mixed load
            mixed, rss = Tally(), []
            start = time.monotonic()
            stop = start + a.duration
            normal = [one_at_a_time(mixed, c, "normal", stop, sentences, gap=0.1) for _ in range(a.normal_clients)]
            normal += [one_at_a_time(mixed, c, "normal beam 2", stop, sentences, gap=0.3, beam=2),
                       one_at_a_time(mixed, c, "normal + page attention", stop, sentences, gap=0.3,
                                     attention={"format": "f16"})]
            hung = asyncio.ensure_future(hang_up(mixed, url, stop))
            await asyncio.gather(*normal, *(repeat(mixed, c, "maximal", stop, MAXIMAL) for _ in range(3)),
                                 abuse(mixed, c, stop), health_probe(mixed, probe, "health", stop, 0.5),
                                 rss_sampler(proc.pid, start, stop, rss))
            hung_up = await hung
            await asyncio.sleep(2)
            health = (await c.get("/health")).json()
            metrics = (await c.get("/metrics")).text
    finally:
        proc.terminate()
        proc.wait(10)

    idle_ms = pct(idle.latency["translate"], 0.5)
    loaded_ms = pct(loaded.latency["translate"], 0.5)
    after_warmup = [m for s, m in rss if s >= a.duration * 0.1] or [0.0]
    tallies = {"idle": idle, "three maximal": loaded, "mixed": mixed}
    totals = {k: sum(getattr(t, k) for t in tallies.values())
              for k in ("lost", "not_json", "server_errors", "over_cap", "unexpected")}
    return {
        "note": ("one 2-core machine shared with other work (other helpers' jobs ran beside it); the server "
                 f"(--threads {a.threads}: 2 model threads, interactive and bulk) and this load generator share the "
                 "same 2 cores, so latencies include the generator's own CPU use"),
        "model": a.model, "duration_s": a.duration,
        "done_when": {
            "idle_translate_p50_ms": idle_ms, "loaded_translate_p50_ms": loaded_ms,
            "loaded_translate_p95_ms": pct(loaded.latency["translate"], 0.95),
            "translate_ratio_p50": round(loaded_ms / idle_ms, 2) if idle_ms and loaded_ms else None,
            "health_max_ms_under_three_maximal": pct(loaded.latency["health"], 1.0),
            "maximal_answered": len(loaded.latency.get("maximal", [])),
        },
        "totals": totals, "problem_examples": [e for t in tallies.values() for e in t.examples],
        "idle": summary(idle), "three_maximal": summary(loaded), "mixed": summary(mixed),
        "hung_up_requests": hung_up,
        "rss_mib": {"samples": rss, "after_warmup_first": after_warmup[0], "after_warmup_max": max(after_warmup),
                    "growth_after_warmup": round(max(after_warmup) / after_warmup[0] - 1, 3) if after_warmup[0] else None},
        "server_batching": health["batching"],
        "server_rejected": [line for line in metrics.splitlines() if line.startswith("attnlab_rejected_total")],
    }


def table(r: dict) -> str:
    d = r["done_when"]
    rows = [("idle one-sentence /translate p50", f"{d['idle_translate_p50_ms']} ms"),
            ("same, three maximal requests running, p50 / p95", (f"{d['loaded_translate_p50_ms']} / "
                                                                  f"{d['loaded_translate_p95_ms']} ms "
                                                                  f"({d['translate_ratio_p50']}x idle)")),
            ("/health worst, three maximal running", f"{d['health_max_ms_under_three_maximal']} ms"),
            *((f"mixed {k}: p50 / p95 / p99", f"{v['p50_ms']} / {v['p95_ms']} / {v['p99_ms']} ms (n={v['n']})")
              for k, v in r["mixed"].items() if k.startswith("normal") or k in ("health", "maximal")),
            ("lost / not JSON / 5xx / over the cap / unexpected status",
             " / ".join(str(r["totals"][k]) for k in ("lost", "not_json", "server_errors", "over_cap", "unexpected"))),
            ("RSS after warm-up: first -> max", (f"{r['rss_mib']['after_warmup_first']} -> "
                                                 f"{r['rss_mib']['after_warmup_max']} MiB "
                                                 f"({r['rss_mib']['growth_after_warmup']})"))]
    return "\n".join(["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a run directory (e.g. attnlab train --task dates --preset tiny)")
    ap.add_argument("--duration", type=float, default=600, help="seconds of mixed load (default 600)")
    ap.add_argument("--idle-s", type=float, default=10)
    ap.add_argument("--loaded-s", type=float, default=30, help="seconds of the three-maximal check")
    ap.add_argument("--normal-clients", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    report = asyncio.run(main(args))
    write_report(args.out, report)
    print(table(report), file=sys.stderr)
