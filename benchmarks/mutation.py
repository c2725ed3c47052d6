"""Mutation testing: how much of the maths would the tests notice if it were wrong?

A small AST mutator (no dependency): each mutant changes ONE thing in one source file (an arithmetic
operator, a comparison, a boolean operator, a number, a True/False, a dropped `not`/`~`/unary minus, a maths
function swapped for one of the same shape: tril/triu, sin/cos, max/min, sum/mean, softmax/log_softmax...), and
runs the tests that target that file (TARGETS). A mutant is killed when those tests fail (or time out),
survives when they pass. The run works on a copy of the repository (git ls-files) in a temporary
directory: the checkout is never modified. torch and pytest are imported once; each mutant runs in a
forked child, so a mutant costs its tests' time, not an interpreter start.

    python benchmarks/mutation.py                            # every file in TARGETS
    python benchmarks/mutation.py --files src/attnlab/layers/masks.py --max-mutants 40
    python benchmarks/mutation.py --list                     # the mutants only, no tests

Writes benchmarks/results/mutation.json (merged per file with an earlier run's results): per file the
mutants, killed, survived (with line, original and mutated code), the score, and the tests used.
"""
from __future__ import annotations

import argparse
import ast
import copy
import functools
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mutation_coverage
import mutation_inplace

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "mutation.json"
# equivalent mutants, each with its reason, matched by (mutation, code of the line) and the column when given
REVIEWS = REPO / "benchmarks" / "mutation_reviews.json"

# The mutated files: every file of layers/, decoding/, models/ and the loss.
TARGETS = sorted(str(p.relative_to(REPO)) for pattern in ("layers/*.py", "decoding/*.py", "models/*.py",
                                                          "training/loss.py")
                 for p in (REPO / "src" / "attnlab").glob(pattern))
# The test modules whose per-test line coverage selects the tests of each mutant (those that execute its lines):
# the whole default suite. Tests that run attnlab in a subprocess execute no traced line and are never selected.
TEST_MODULES = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py"))

FIRST_CHUNK = 6  # tests run in a first, small pytest session per mutant

SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
              ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
              ast.MatMult: ast.Mult}
# method and function names that compute something else of the same shape
SWAP_NAME = {"tril": "triu", "tril_": "triu_", "triu": "tril", "amax": "amin", "amin": "amax", "max": "min",
             "min": "max", "sin": "cos", "cos": "sin", "sum": "mean", "mean": "sum", "any": "all", "all": "any",
             "softmax": "log_softmax", "log_softmax": "softmax", "argmax": "argmin", "tanh": "sigmoid",
             "exp": "expm1", "exp_": "expm1_", "logsumexp": "amax", "sqrt": "log"}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}


def _docstring_ids(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _skipped_ids(tree: ast.AST) -> set[int]:
    """Nodes not worth mutating: docstrings, annotations, the messages of raised errors."""
    skip = _docstring_ids(tree)
    for node in ast.walk(tree):
        parts = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts = [a.annotation for a in node.args.args + node.args.kwonlyargs if a.annotation] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            parts = [node.annotation]
        elif isinstance(node, ast.Raise):
            parts = [node.exc]
        for part in parts:
            if part is not None:
                skip.update(id(n) for n in ast.walk(part))
    return skip


def _scopes(tree: ast.AST) -> dict[int, tuple[ast.AST, bool]]:
    """id(node) -> (its innermost enclosing function, whether the node is in the def line: defaults, decorators)."""
    out: dict[int, tuple[ast.AST, bool]] = {}

    def visit(node, scope, header):
        for child in ast.iter_child_nodes(node):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_header = child is not None and child not in node.body
                out[id(child)] = (node, in_header)
                visit(child, node, in_header)
            else:
                out[id(child)] = (scope, header)
                visit(child, scope, header)
    visit(tree, None, False)
    return out


def mutations(source: str) -> list[dict]:
    """Every mutant of `source`: line, end_line, col, mutation, code (the original line), mutated (module source),
    and the lines whose tests it needs when its own lines run in no test: the body of its function when it
    sits in a def line (a default value runs at import), the whole file when it is outside any function."""
    tree = ast.parse(source)
    skip = _skipped_ids(tree)
    scopes = _scopes(tree)
    lines = source.splitlines()
    found = []
    seen: dict[tuple, int] = {}
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip:
            continue
        for description, change in _changes(node):
            mutated_tree = copy.deepcopy(tree)
            target = list(ast.walk(mutated_tree))[index]
            change(target)
            try:
                mutated = ast.unparse(mutated_tree)
                compile(mutated, "<mutant>", "exec")
            except (SyntaxError, ValueError):
                continue
            line = getattr(node, "lineno", 0)
            scope, header = scopes.get(id(node), (None, False))
            if scope is None:
                fallback = (1, len(lines))
            elif header:
                fallback = (scope.body[0].lineno, scope.end_lineno)
            else:
                fallback = None
            col = getattr(node, "col_offset", 0)
            # nested operators starting at one column (a + b + c): "#2", "#3" after the first
            same = seen[line, col, description] = seen.get((line, col, description), 0) + 1
            found.append({"line": line, "end_line": getattr(node, "end_lineno", line) or line, "col": col,
                          "mutation": description + (f" #{same}" if same > 1 else ""),
                          "code": lines[line - 1].strip() if line else "", "mutated": mutated,
                          "fallback": fallback})
    return found


def select_tests(mutant: dict, lines: dict[int, dict[str, set]], durations: dict[str, float],
                 failed: set[str]) -> list[str]:
    """The tests that execute the mutant's lines and its fallback lines, fastest first. A line run while a
    test's fixtures were set up selects every test of that module (a module fixture serves them all)."""
    def covering(first, last):
        found: dict[str, set] = {}
        for n in range(first, last + 1):
            for nodeid, phases in lines.get(n, {}).items():
                found.setdefault(nodeid, set()).update(phases)
        return found
    found = covering(mutant["line"], mutant["end_line"])
    if mutant["fallback"]:  # a default value or a constant: its line ran at import, its effect in the body
        for nodeid, phases in covering(*mutant["fallback"]).items():
            found.setdefault(nodeid, set()).update(phases)
    tests = set(found)
    for nodeid, phases in found.items():
        if phases - {"call"}:
            module = nodeid.split("::")[0]
            tests.update(t for t in durations if t.split("::")[0] == module)
    return sorted(tests - failed, key=lambda t: (durations.get(t, 0.0), t))


def _changes(node: ast.AST):
    if isinstance(node, ast.BinOp) and type(node.op) in SWAP_BINOP:
        new = SWAP_BINOP[type(node.op)]
        yield f"{type(node.op).__name__} -> {new.__name__}", lambda n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.AugAssign) and type(node.op) in SWAP_BINOP:
        new = SWAP_BINOP[type(node.op)]
        yield f"{type(node.op).__name__}= -> {new.__name__}=", lambda n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in SWAP_CMP:
                new = SWAP_CMP[type(op)]

                def change(n, i=i, new=new):
                    n.ops[i] = new()
                which = f" (comparison {i + 1})" if len(node.ops) > 1 else ""  # a < b < c: two mutants
                yield f"{type(op).__name__} -> {new.__name__}{which}", change
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield f"{type(node.op).__name__} -> {new.__name__}", lambda n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert, ast.USub)):
        yield f"drop {type(node.op).__name__}", lambda n: setattr(n, "op", ast.UAdd())
    elif isinstance(node, ast.Attribute) and node.attr in SWAP_NAME:
        new = SWAP_NAME[node.attr]
        yield f".{node.attr} -> .{new}", lambda n, new=new: setattr(n, "attr", new)
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        yield f"{node.value} -> {not node.value}", lambda n: setattr(n, "value", not n.value)
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = node.value
        new = value + 1 if isinstance(value, int) else (value * 2 if value else 1.0)
        yield f"{value!r} -> {new!r}", lambda n, new=new: setattr(n, "value", new)


def run_tests(workdir: Path, tests: list[str], cpu_seconds: float) -> str:
    """'killed' (the tests fail), 'survived' (they pass) or 'timeout' (counted as killed), in a forked child.
    The limit is on the child's CPU time, not the wall clock: on shared cores a starved child is not a kill."""
    pid = os.fork()
    if pid == 0:  # the child: run pytest in-process on the mutated copy, then leave without cleanup
        try:
            limit = int(cpu_seconds) + 1
            resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 5))  # SIGXCPU past the limit
            os.chdir(workdir)
            sys.path.insert(0, str(workdir / "src"))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests])
        except BaseException:  # noqa: BLE001 - an import error of the mutant is a kill
            code = 1
        os._exit(1 if int(code) == mutation_inplace.UNPATCHED else int(code))
    return mutation_inplace.wait_child(pid, cpu_seconds)


def copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", nargs="*", default=TARGETS, help="source files (of TARGETS)")
    ap.add_argument("--max-mutants", type=int, default=0, help="per file, spread over it (0: all)")
    ap.add_argument("--lines", default="", help="only mutants on these lines, e.g. 20-40,77")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds for the whole run; the rest is left "
                                                                  "untested")
    ap.add_argument("--survivors", action="store_true", help="only the mutants that survived (or were not "
                    "covered) in the results file: after new tests, to see which they kill")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one CPU thread each)")
    ap.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    for name in args.files:
        if name not in TARGETS:
            raise SystemExit(f"{name} is not a mutated file: one of {', '.join(TARGETS)}")
    wanted = {n for part in filter(None, args.lines.split(",")) for n in range(
        int(part.split("-")[0]), int(part.split("-")[-1]) + 1)}
    chosen: dict[str, tuple[str, int, list[dict]]] = {}
    reviews = json.loads(REVIEWS.read_text()) if REVIEWS.is_file() else {}
    previous = json.loads(args.out.read_text()).get("files", {}) if args.out.is_file() else {}
    for name in args.files:
        source = (REPO / name).read_text()
        mutants = mutations(source)
        total = len(mutants)
        # a low-discrepancy order (golden ratio): any prefix, cut by --max-mutants or --time-budget, is
        # spread evenly over the file
        mutants = [mutants[i] for i in sorted(range(total), key=lambda i: (i * 0.6180339887) % 1.0)]
        if wanted:
            mutants = [m for m in mutants if m["line"] in wanted]
        if args.survivors:  # those reviewed as equivalent keep their record: they would survive again
            before = {(r["line"], r["col"], r["mutation"]) for r in previous.get(name, {}).get("survivors", [])}
            mutants = [m for m in mutants if (m["line"], m["col"], m["mutation"]) in before
                       and not _review(m, reviews.get(name, []))]
        if args.max_mutants:
            mutants = mutants[:args.max_mutants]
        if args.list:
            for m in mutants:
                print(f"{name}:{m['line']}: {m['mutation']}   | {m['code']}")
            continue
        chosen[name] = (source, total, mutants)
    if args.list:
        return 0

    import pytest  # noqa: F401 - once, before forking: the workers import attnlab (the copy) and the tests
    import torch

    try:
        import transformers  # noqa: F401 - the decoding tests compare with generate()
    except ImportError:
        pass
    torch.set_num_threads(1)
    os.environ.setdefault("ATTNLAB_DATA_DIR", str(REPO.parent / "shared" / "data"))
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.setdefault("files", {})
    partial = bool(wanted or args.max_mutants or args.survivors)
    with tempfile.TemporaryDirectory(prefix="attnlab-mutation-") as tmp:
        work = Path(tmp) / "repo"
        work.mkdir()
        copy_repo(work)
        cov = mutation_coverage.collect(work, TEST_MODULES, TARGETS, jobs=args.jobs)
        failed = set(cov["failed"])
        if failed:
            print(f"failing without any mutant (left out): {sorted(failed)}", flush=True)
        run_all(work, Path(tmp), chosen, cov, failed, reviews, results, args, torch.__version__, partial)
    return 0


def module_statement_names(source: str, line: int) -> list[str]:
    """The names a module-level assignment binds, when `line` lies in one (else none)."""
    for node in ast.parse(source).body:
        if node.lineno <= line <= (node.end_lineno or node.lineno) and isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return []


def costs(cov: dict) -> dict[str, float]:
    """A test's time when it runs alone: its own (set-up and call) plus its module's most expensive fixture
    set-up (a module fixture's cost is recorded on whichever test needed it first)."""
    module_setup: dict[str, float] = {}
    for nodeid, seconds in cov.get("setups", {}).items():
        module = nodeid.split("::")[0]
        module_setup[module] = max(module_setup.get(module, 0.0), seconds)
    return {t: d + module_setup.get(t.split("::")[0], 0.0) for t, d in cov["durations"].items()}


def _module_name(name: str) -> str:
    return name.removeprefix("src/").removesuffix(".py").replace("/", ".")


def run_all(work: Path, tmp: Path, chosen: dict, cov: dict, failed: set[str], reviews: dict, results: dict,
            args, torch_version: str, partial: bool) -> None:
    """Runs every chosen mutant in `args.jobs` workers (mutation_inplace: patched into the live module) and
    records the results per file as they come; a mutant the workers cannot patch in runs the slow way after."""
    durations = costs(cov)
    jobs, where, sanity = [], [], {}
    records: dict[str, list[dict]] = {}
    for name, (source, total, mutants) in chosen.items():
        previous = results["files"].get(name, {})
        # a partial rerun (--lines, --max-mutants, --survivors) keeps every earlier record until the mutant's new
        # result replaces it (_record), so an interrupted rerun loses nothing
        kept = list(previous.get("mutants", [])) if partial else []
        for r in kept:  # reviews written since the record was made
            review = _review(r, reviews.get(name, [])) if r["result"] in ("survived", "not covered") else None
            r.pop("equivalent", None)
            if review:
                r["equivalent"] = review
        records[name] = kept
        everything = sorted({t for ls in cov["lines"][name].values() for t in ls} - failed,
                            key=lambda t: durations.get(t, 0.0))
        if everything:
            sanity[name] = everything[:FIRST_CHUNK]
        for m in mutants:
            tests = select_tests(m, cov["lines"][name], durations, failed)
            if not tests:
                _record(records[name], m, "not covered", 0, 0.0, reviews.get(name, []))
                continue
            jobs.append({"module": _module_name(name), "mutated": m["mutated"], "tests": tests,
                         "names": module_statement_names(source, m["line"]),
                         "durations": {t: durations.get(t, 1.0) for t in tests}})
            where.append((name, m))
    jobs_dir = tmp / "jobs"
    jobs_dir.mkdir()
    (jobs_dir / "jobs.json").write_text(json.dumps({"mutants": jobs, "sanity": sanity, "durations": durations}))
    deadline = time.time() + args.time_budget if args.time_budget else float("inf")
    outs, pids = [], []
    print(f"{len(jobs)} mutants to run in {args.jobs} workers", flush=True)
    for k in range(max(1, args.jobs)):
        out = jobs_dir / f"results-{k}.jsonl"
        out.touch()
        pid = os.fork()
        if pid == 0:
            try:
                mutation_inplace.worker(work, TEST_MODULES, jobs_dir, out, FIRST_CHUNK, deadline)
            finally:
                os._exit(0)
        outs.append(out)
        pids.append(pid)
    started = time.monotonic()
    seen: dict[Path, int] = {o: 0 for o in outs}
    unpatched = []

    def collect_new() -> None:
        for out in outs:
            text = out.read_text()
            lines = text.splitlines()
            complete = lines if text.endswith("\n") else lines[:-1]  # a line still being written waits
            for line in complete[seen[out]:]:
                r = json.loads(line)
                if "sanity" in r:
                    for pid in pids:
                        try:
                            os.kill(pid, signal.SIGTERM)
                        except ProcessLookupError:
                            pass
                    raise SystemExit(f"sanity check failed: the unmutated {r['sanity']} gave {r['result']} in a "
                                     f"worker; no mutant result can be trusted\n{r.get('detail', '')}")
                name, m = where[r["index"]]
                if r["result"] == "unpatched":
                    unpatched.append(r["index"])
                    continue
                _record(records[name], m, r["result"], r["tests_run"], r["seconds"], reviews.get(name, []))
            seen[out] = len(complete)
        for name, (source, total, mutants) in chosen.items():
            if records[name]:
                summarise(results, name, total, records[name], time.monotonic() - started)
        write(args.out, results, torch_version)

    alive = set(pids)
    while alive:
        time.sleep(2)
        for pid in list(alive):
            if os.waitpid(pid, os.WNOHANG)[0]:
                alive.discard(pid)
        collect_new()
    collect_new()
    for index in unpatched:  # the slow way: a fresh pytest session on a copy with the mutated file
        name, m = where[index]
        source = chosen[name][0]
        tests = jobs[index]["tests"]
        t0 = time.monotonic()
        (work / name).write_text(m["mutated"])
        try:
            for chunk in (tests[:FIRST_CHUNK], tests[FIRST_CHUNK:]):
                if chunk:
                    result = run_tests(work, chunk, 90.0 + 5 * sum(durations.get(t, 1.0) for t in chunk))
                    if result != "survived":
                        break
        finally:
            (work / name).write_text(source)
        _record(records[name], m, result, len(tests), time.monotonic() - t0, reviews.get(name, []), slow=True)
        summarise(results, name, chosen[name][1], records[name], time.monotonic() - started)
        write(args.out, results, torch_version)
    for name in chosen:
        if name in results["files"]:
            print(f"== {name}: {results['files'][name]['score']} ({chosen[name][1]} mutants in the file)", flush=True)


def _record(records: list[dict], m: dict, result: str, tests_run: int, seconds: float, reviews: list[dict],
            slow: bool = False) -> None:
    record = {"line": m["line"], "col": m["col"], "mutation": m["mutation"], "code": m["code"],
              "result": result, "tests_run": tests_run, "seconds": round(seconds, 1)}
    records[:] = [r for r in records if (r["line"], r["col"], r["mutation"]) != (m["line"], m["col"], m["mutation"])]
    if slow:
        record["run"] = "fresh pytest session (could not be patched in place)"
    if result in ("survived", "not covered"):
        review = _review(m, reviews)
        if review:
            record["equivalent"] = review
    records.append(record)
    print(f"{m['line']:>4} {m['mutation']:<24} {result:<11} {tests_run:>3} tests {record['seconds']:>5} s | "
          f"{m['code']}", flush=True)


def _review(mutant: dict, reviews: list[dict]) -> str | None:
    for r in reviews:
        if r["mutation"] == mutant["mutation"] and r["code"] == mutant["code"] and r.get("col", mutant["col"]) == \
                mutant["col"]:
            return r["review"]
    return None


def summarise(results: dict, name: str, total: int, records: list[dict], seconds: float) -> None:
    count = {k: sum(r["result"] == k for r in records) for k in ("killed", "timeout", "survived", "not covered")}
    killed = count["killed"] + count["timeout"]
    equivalent = sum("equivalent" in r for r in records)
    records = sorted(records, key=lambda r: (r["line"], r["col"], r["mutation"]))
    results["files"][name] = {
        "mutants_in_file": total, "mutants_tested": len(records), "killed": killed,
        "killed_by_timeout": count["timeout"], "survived": count["survived"], "not_covered": count["not covered"],
        "equivalent": equivalent, "score": round(killed / len(records), 4),
        "score_excluding_equivalent": round(killed / max(1, len(records) - equivalent), 4),
        "seconds": round(seconds, 1),
        "survivors": [r for r in records if r["result"] in ("survived", "not covered")],
        "mutants": records}


@functools.cache
def mutants_in_targets() -> int:
    """Every target's mutants, counted once per process (the sources do not change during a run)."""
    return sum(len(mutations((REPO / n).read_text())) for n in TARGETS)


def write(out: Path, results: dict, torch_version: str) -> None:
    """The summary over every file so far, written atomically."""
    files = results["files"]
    tested, killed = sum(f["mutants_tested"] for f in files.values()), sum(f["killed"] for f in files.values())
    equivalent = sum(f["equivalent"] for f in files.values())
    results.pop("score_after_review", None)
    results.update({
        "tool": "benchmarks/mutation.py (AST mutator: arithmetic, comparison and boolean operators, numbers, "
                "True/False, swapped maths functions (tril/triu, sin/cos, max/min, sum/mean, softmax/log_softmax...), "
                "dropped not/~/unary minus; docstrings, annotations and error messages untouched). Each mutant runs "
                "only the tests that execute its lines (per-test line coverage, benchmarks/mutation_coverage.py); "
                "a mutant on lines no test executes is a survivor ('not covered').",
        "score": round(killed / tested, 4) if tested else None, "mutants_tested": tested, "killed": killed,
        "equivalent": equivalent,
        "score_excluding_equivalent": round(killed / max(1, tested - equivalent), 4) if tested else None,
        "equivalent_note": f"equivalent mutants (same behaviour, reasons in {REVIEWS.relative_to(REPO)}) are "
                           "listed with their reason in each file's survivors",
        "coverage": {"files_run": {n: f"{f['mutants_tested']} of {f['mutants_in_file']}" for n, f in files.items()},
                     "files_not_run": [n for n in TARGETS if n not in files]},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch_version,
                    "note": "2 cores shared with other jobs while it ran"},
    })
    results["mutants_in_targets"] = in_targets = mutants_in_targets()
    untested = [n for n in TARGETS if n not in files]
    partly = [n for n, f in files.items() if f["mutants_tested"] < f["mutants_in_file"]]
    results["status"] = ("complete: every mutant of every target tested" if not untested and not partly else
                         f"INCOMPLETE: {tested} of {in_targets} mutants of the targets tested; "
                         f"{len(untested)} files not run, {len(partly)} partly ({', '.join(partly)}); the scores "
                         "above cover the tested mutants only")
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=1) + "\n")
    tmp_out.replace(out)


if __name__ == "__main__":
    sys.exit(main())
