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
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "mutation.json"

# file -> the tests that target it (pytest arguments: paths, -k expressions)
_DECODING = ["tests/decoding/test_decoding.py", "-k", "not overfits", "tests/export/test_generate_parity.py"]
TARGETS: dict[str, list[str]] = {
    "src/attnlab/layers/masks.py": ["tests/layers/test_attention.py", "tests/models/test_transformer.py",
                                    "tests/models/test_parity_nn_transformer.py"],
    "src/attnlab/layers/attention.py": ["tests/layers/test_attention.py", "tests/layers/test_attention_by_hand.py",
                                        "tests/layers/test_rnn_attention.py", "tests/layers/test_packed_attention.py",
                                        "tests/models/test_parity_nn_transformer.py"],
    "src/attnlab/layers/embedding.py": ["tests/layers/test_embedding.py", "tests/models/test_parity_nn_transformer.py"],
    "src/attnlab/layers/residual.py": ["tests/models/test_transformer.py", "tests/models/test_parity_nn_transformer.py"],
    "src/attnlab/decoding/beam.py": _DECODING,
    "src/attnlab/decoding/greedy.py": _DECODING,
    "src/attnlab/training/loss.py": ["tests/training/test_loss_reference.py", "tests/training/test_schedule_loss.py",
                                     "-k", "loss"],
}

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


def mutations(source: str) -> list[tuple[int, str, str, str]]:
    """Every mutant of `source`: (line, description, original code of the line, mutated module source)."""
    tree = ast.parse(source)
    skip = _skipped_ids(tree)
    lines = source.splitlines()
    found = []
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
            found.append((line, description, lines[line - 1].strip() if line else "", mutated))
    return found


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
                yield f"{type(op).__name__} -> {new.__name__}", change
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


def run_tests(workdir: Path, tests: list[str], timeout: float) -> str:
    """'killed' (the tests fail), 'survived' (they pass) or 'timeout' (counted as killed), in a forked child."""
    pid = os.fork()
    if pid == 0:  # the child: run pytest in-process on the mutated copy, then leave without cleanup
        try:
            os.chdir(workdir)
            sys.path.insert(0, str(workdir / "src"))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests])
        except BaseException:  # noqa: BLE001 - an import error of the mutant is a kill
            code = 1
        os._exit(int(code))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return "survived" if code == 0 else "killed"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "timeout"


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
    ap.add_argument("--files", nargs="*", default=list(TARGETS), help="source files (keys of TARGETS)")
    ap.add_argument("--max-mutants", type=int, default=0, help="per file, spread over it (0: all)")
    ap.add_argument("--time-budget", type=float, default=0, help="seconds per file; the rest is left untested")
    ap.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import pytest  # noqa: F401 - once, before forking: the children only import attnlab (mutated) and the tests
    import torch

    try:
        import transformers  # noqa: F401 - the decoding targets compare with generate()
    except ImportError:
        pass
    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.setdefault("files", {})
    with tempfile.TemporaryDirectory(prefix="attnlab-mutation-") as tmp:
        work = Path(tmp)
        copy_repo(work)
        for name in args.files:
            if name not in TARGETS:
                raise SystemExit(f"no targeted tests for {name}; add it to TARGETS")
            source = (REPO / name).read_text()
            mutants = mutations(source)
            total = len(mutants)
            # a low-discrepancy order (golden ratio): any prefix, cut by --max-mutants or --time-budget, is
            # spread evenly over the file
            mutants = [mutants[i] for i in sorted(range(total), key=lambda i: (i * 0.6180339887) % 1.0)]
            if args.max_mutants:
                mutants = mutants[:args.max_mutants]
            if args.list:
                for line, what, code, _ in mutants:
                    print(f"{name}:{line}: {what}   | {code}")
                continue
            tests = TARGETS[name]
            start = time.monotonic()
            baseline = run_tests(work, tests, timeout=1800)
            base_seconds = time.monotonic() - start
            if baseline != "survived":
                raise SystemExit(f"the tests of {name} fail without any mutant: {tests}")
            timeout = max(30.0, 3 * base_seconds)
            outcome = {"killed": 0, "timeout": 0, "survived": 0}
            survivors = []
            tested = 0
            started = time.monotonic()
            for line, what, code, mutated in mutants:
                if args.time_budget and time.monotonic() - started > args.time_budget:
                    break
                (work / name).write_text(mutated)
                try:
                    result = run_tests(work, tests, timeout)
                finally:
                    (work / name).write_text(source)
                outcome[result] += 1
                tested += 1
                if result == "survived":
                    survivors.append({"line": line, "mutation": what, "code": code})
                print(f"{name}:{line} {what:<24} {result:<8} | {code}", flush=True)
                # after every mutant, so that a run stopped early leaves what it measured
                killed = outcome["killed"] + outcome["timeout"]
                results["files"][name] = {
                    "mutants_in_file": total, "mutants_tested": tested, "killed": killed,
                    "killed_by_timeout": outcome["timeout"], "survived": outcome["survived"],
                    "score": round(killed / tested, 4), "tests": tests,
                    "seconds": round(time.monotonic() - started, 1), "survivors": survivors}
                write(args.out, results, torch.__version__)
            print(f"== {name}: {outcome} ({total} mutants in the file)", flush=True)
    return 0


def write(out: Path, results: dict, torch_version: str) -> None:
    """The summary over every file so far, written atomically."""
    files = results["files"].values()
    tested, killed = sum(f["mutants_tested"] for f in files), sum(f["killed"] for f in files)
    results.update({
        "tool": "benchmarks/mutation.py (AST mutator: arithmetic, comparison and boolean operators, numbers, "
                "True/False, swapped maths functions (tril/triu, sin/cos, max/min, sum/mean, softmax/log_softmax...), dropped not/~/unary minus; docstrings, annotations and error messages untouched)",
        "score": round(killed / tested, 4) if tested else None, "mutants_tested": tested, "killed": killed,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch_version,
                    "note": "2 cores shared with other jobs while it ran"},
    })
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(results, indent=1) + "\n")
    tmp_out.replace(out)


if __name__ == "__main__":
    sys.exit(main())
