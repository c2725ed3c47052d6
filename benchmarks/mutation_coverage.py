"""Which tests execute which lines: the per-test line coverage that benchmarks/mutation.py selects tests by.

Each test module runs once, in a forked child, under a `sys.settrace` tracer that records only the lines of
the mutated source files (a frame of any other file is not traced line by line). The lines are recorded per
test (pytest node id) and per phase: a line run while a test's fixtures are set up may serve every test of that
module that shares the fixture, so such lines select the whole module. Lines run outside any test (imports,
collection) belong to no test. Results are cached per test module under ~/.cache/attnlab-mutation, keyed by the
module's text, the conftest files and every source file of the package: a new test retraces its module only.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

FORMAT = 2  # 2: fixture set-up times recorded per test ("setups")
CACHE = Path(os.environ.get("ATTNLAB_MUTATION_CACHE", Path.home() / ".cache" / "attnlab-mutation"))


def _key(work: Path, module: str, sources_hash: str) -> str:
    h = hashlib.sha256(f"{FORMAT} {sources_hash}".encode())
    h.update(module.encode())
    h.update((work / module).read_bytes())
    for conftest in sorted((work / "tests").rglob("conftest.py")):
        h.update(conftest.read_bytes())
    return h.hexdigest()[:24]


def sources_digest(work: Path) -> str:
    h = hashlib.sha256()
    for path in sorted((work / "src").rglob("*.py")):
        h.update(str(path.relative_to(work)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _trace_module(work: Path, module: str, files: list[str], out: Path) -> None:
    """In a forked child: run one test module under the tracer, write {file: {line: [[nodeid, phase]...]}}."""
    import pytest

    targets = {str((work / f).resolve()): f for f in files}
    lines: dict[str, dict[int, set]] = {f: {} for f in files}
    durations: dict[str, float] = {}
    setups: dict[str, float] = {}
    failed: set[str] = set()
    current: list = [None, None]  # node id, phase

    def local(frame, event, arg):
        if event == "line" and current[0] is not None:
            lines[targets[frame.f_code.co_filename]].setdefault(frame.f_lineno, set()).add(tuple(current))
        return local

    def tracer(frame, event, arg):
        if frame.f_code.co_filename in targets:
            if current[0] is not None:  # the first line of a call (a def line with a decorator, a lambda)
                lines[targets[frame.f_code.co_filename]].setdefault(frame.f_lineno, set()).add(tuple(current))
            return local
        return None

    class Recorder:
        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_setup(self, item):
            current[:] = [item.nodeid, "setup"]
            yield

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_call(self, item):
            current[:] = [item.nodeid, "call"]
            start = time.perf_counter()
            yield
            durations[item.nodeid] = time.perf_counter() - start

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_teardown(self, item):
            current[:] = [item.nodeid, "teardown"]
            yield
            current[:] = [None, None]

        def pytest_runtest_logreport(self, report):
            if report.failed:
                failed.add(report.nodeid)
            if report.when == "setup":  # fixtures count in a test's time: they run again when it runs alone
                durations[report.nodeid] = durations.get(report.nodeid, 0.0) + report.duration
                setups[report.nodeid] = report.duration

    os.chdir(work)
    sys.path.insert(0, str(work / "src"))
    threading.settrace(tracer)
    sys.settrace(tracer)
    pytest.main(["-q", "-p", "no:cacheprovider", "-m", "not slow", module], plugins=[Recorder()])
    sys.settrace(None)
    data = {"lines": {f: {str(n): sorted(map(list, s)) for n, s in ls.items()} for f, ls in lines.items()},
            "durations": durations, "setups": setups, "failed": sorted(failed)}
    out.write_text(json.dumps(data))


def collect(work: Path, modules: list[str], files: list[str], log=print, jobs: int = 1) -> dict:
    """{"lines": {file: {line: {nodeid: phase-set}}}, "durations": {nodeid: s}, "setups": {nodeid: s},
    "failed": [...]} over modules. Modules not in the cache are traced, `jobs` at a time (one process each)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    digest = sources_digest(work)
    cached = {m: CACHE / f"{_key(work, m, digest + ' '.join(files))}.json" for m in modules}
    todo = [m for m in modules if not cached[m].is_file()]
    running: dict[int, tuple[str, float]] = {}
    while todo or running:
        while todo and len(running) < max(1, jobs):
            module = todo.pop(0)
            log(f"tracing {module} ...")
            pid = os.fork()
            if pid == 0:
                try:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)
                    os.dup2(devnull, 2)
                    _trace_module(work, module, files, cached[module].with_suffix(".tmp"))
                    os.replace(cached[module].with_suffix(".tmp"), cached[module])
                finally:
                    os._exit(0)
            running[pid] = (module, time.monotonic())
        pid, _ = os.wait()
        module, start = running.pop(pid)
        log(f"  {module}: {time.monotonic() - start:.0f} s")
        if not cached[module].is_file():
            raise SystemExit(f"tracing {module} failed")
    merged: dict = {"lines": {f: {} for f in files}, "durations": {}, "setups": {}, "failed": []}
    for module in modules:
        data = json.loads(cached[module].read_text())
        for f, ls in data["lines"].items():
            for n, entries in ls.items():
                slot = merged["lines"][f].setdefault(int(n), {})
                for nodeid, phase in entries:
                    slot.setdefault(nodeid, set()).add(phase)
        merged["durations"].update(data["durations"])
        merged["setups"].update(data["setups"])
        merged["failed"] += data["failed"]
    return merged
