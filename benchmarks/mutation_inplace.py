"""Running mutants without restarting anything: a mutant is patched into the already imported module.

benchmarks/mutation.py starts a few workers; each runs ONE pytest session over the test modules (attnlab, torch,
transformers and every test module imported and collected once) whose run loop is replaced by a mutant loop:
for each mutant a forked child patches the mutated source into the live module and runs the tests selected for
it with pytest's own run protocol (fixtures, skips, failures as in a normal run), stopping at the first failure.
A mutant then costs the time of its tests, not an interpreter start and a collection (which took 20-60 s of CPU).

Patching in place (`apply`): the mutated source is executed in a fresh namespace (module-level code of these
files has no side effects outside it), then every function of the live module, its classes' methods, properties,
static and class methods, and the functions behind decorators (`__wrapped__`) take the new code object and
default values, so every reference other modules and objects already hold sees the mutant. Module and class
constants made of plain data (numbers, strings, tuples...) are replaced where they differ, and so are the
bindings other modules made of them with `from ... import NAME`. A patch that cannot be made (a different
closure) is reported as such, and that mutant is run the slow way (a fresh pytest session on a mutated copy).
"""
from __future__ import annotations

import builtins
import json
import os
import resource
import signal
import sys
import time
import types
from pathlib import Path

PLAIN = (int, float, bool, str, bytes, type(None))
SKIPPED = {"__dict__", "__weakref__", "__module__", "__qualname__", "__doc__", "__annotations__", "__slots__",
           "__dataclass_params__", "__match_args__", "__hash__"}
UNPATCHED = 3  # the child's exit code when the tool, not the mutant, failed


class PatchError(Exception):
    pass


def _plain(value) -> bool:
    if isinstance(value, PLAIN):
        return True
    if isinstance(value, (tuple, list, frozenset, set)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    return False


def _differs(old, new) -> bool:
    return type(old) is not type(new) or old != new


def _functions(obj) -> list:
    """The Python functions behind a module or class attribute (through decorators), in a fixed order."""
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        return [obj.fget, obj.fset, obj.fdel]
    for _ in range(10):
        if not hasattr(obj, "__wrapped__"):
            break
        obj = obj.__wrapped__
    return [obj] if isinstance(obj, types.FunctionType) else []


def _patch_function(old, new) -> None:
    try:
        old.__code__ = new.__code__
    except ValueError as e:  # a different number of free variables
        raise PatchError(f"{old.__qualname__}: {e}") from e
    old.__defaults__ = new.__defaults__
    old.__kwdefaults__ = new.__kwdefaults__


def _patch(old_ns, new_ns: dict, modname: str, set_value, changed: dict | None) -> None:
    for name, new in new_ns.items():
        if name in SKIPPED or name not in old_ns:
            continue
        old = old_ns[name]
        if old is new:
            continue
        if isinstance(old, type) and isinstance(new, type):
            if old.__module__ == modname and new.__module__ == modname:
                _patch(vars(old), vars(new), modname, lambda n, v, cls=old: setattr(cls, n, v), None)
            continue
        if name == "__dataclass_fields__":
            for field_name, field in new.items():
                before = old.get(field_name)
                if before is not None and _plain(field.default) and _differs(before.default, field.default):
                    before.default = field.default
            continue
        old_fns, new_fns = _functions(old), _functions(new)
        if old_fns or new_fns:
            if len(old_fns) != len(new_fns):
                raise PatchError(f"{name}: not the same kind of object after the mutation")
            for o, n in zip(old_fns, new_fns):
                if (o is None) != (n is None):
                    raise PatchError(f"{name}: property accessors differ")
                if o is not None and o is not n and getattr(o, "__module__", None) == modname:
                    _patch_function(o, n)
            continue
        if _plain(old) and _plain(new) and _differs(old, new):
            set_value(name, new)
            if changed is not None:
                changed[name] = (old, new)


def _package_containers(package: str, skip) -> list[tuple]:
    """(object, copy) for every module-level list and dict of the package's other modules: running a module's
    code again may append to them (cpu_kernels.ALL gets each Kernels) or re-register classes."""
    out = []
    for name, mod in list(sys.modules.items()):
        if (name == package or name.startswith(package + ".")) and mod is not skip:
            for value in list(vars(mod).values()):
                if type(value) is list:
                    out.append((value, list(value)))
                elif type(value) is dict:
                    out.append((value, dict(value)))
    return out


def apply(modname: str, mutated: str, names: tuple[str, ...] = ()) -> None:
    """Patches the mutated source of module `modname` (already imported) into it, in place. `names`: the names
    bound by the module-level statement the mutant changed; a new value there that is not plain data cannot be
    patched in (other objects hold the old one), so that mutant is left to a fresh session (PatchError).
    Raises PatchError when the tool cannot; any other exception comes from the mutant's own module code."""
    module = sys.modules[modname]
    code = compile(mutated, module.__file__, "exec")
    namespace = {"__name__": modname, "__file__": module.__file__, "__package__": module.__package__,
                 "__spec__": module.__spec__, "__builtins__": builtins}
    saved = _package_containers(modname.split(".")[0], module)
    try:
        exec(code, namespace)  # noqa: S102 - the mutant's module code: an exception here kills the mutant
    finally:
        for container, copy in saved:  # undo what running it again did to the other modules' registries
            if isinstance(container, list):
                container[:] = copy
            else:
                container.clear()
                container.update(copy)
    for name in names:
        value = namespace.get(name)
        if not (_plain(value) or _functions(value) or isinstance(value, (type, types.ModuleType))):
            raise PatchError(f"{name}: a module-level {type(value).__name__} cannot be patched in place")
    changed: dict = {}
    try:
        _patch(vars(module), namespace, modname, lambda n, v: setattr(module, n, v), changed)
    except PatchError:
        raise
    except Exception as e:
        raise PatchError(f"{type(e).__name__}: {e}") from e
    for name, (old, new) in changed.items():  # `from module import NAME` elsewhere
        for other in list(sys.modules.values()):
            if other is module or not isinstance(other, types.ModuleType):
                continue
            try:
                bound = vars(other).get(name)
            except TypeError:
                continue
            if bound is old and not isinstance(old, bool | type(None)):
                setattr(other, name, new)


def run_in_child(modname: str | None, mutated: str | None, items: list, cpu_seconds: float,
                 report: Path | None = None, names: tuple[str, ...] = ()) -> str:
    """Forks; the child patches the mutant in (None: no mutant, the sanity check) and runs `items` in order,
    stopping at the first failure. 'killed', 'survived', 'timeout' (its CPU time ran out) or 'unpatched'."""
    from _pytest.runner import runtestprotocol

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            limit = int(cpu_seconds) + 1
            resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 5))
            if os.environ.get("ATTNLAB_MUTATION_DEBUG"):  # where a child spends its time: stacks every 20 s
                import faulthandler

                log = open(f"{os.environ['ATTNLAB_MUTATION_DEBUG']}-{os.getpid()}", "w")  # noqa: SIM115
                faulthandler.dump_traceback_later(20, repeat=True, file=log)
            if modname is not None:
                try:
                    apply(modname, mutated, names)
                except PatchError:
                    os._exit(UNPATCHED)
            code = 0
            for i, item in enumerate(items):
                reports = runtestprotocol(item, log=False, nextitem=items[i + 1] if i + 1 < len(items) else None)
                if any(r.failed for r in reports):
                    code = 1
                    if report is not None:  # which test failed, and why
                        report.write_text(item.nodeid + "\n" + "\n".join(r.longreprtext for r in reports
                                                                          if r.failed)[-4000:])
                    break
        except BaseException:  # noqa: BLE001 - the mutant broke something: a kill
            code = 1
        os._exit(code)
    return wait_child(pid, cpu_seconds)


def wait_child(pid: int, cpu_seconds: float) -> str:
    """A mutant's child: exit 0 'survived', UNPATCHED 'unpatched', other codes 'killed'; out of CPU time (or
    asleep far past it) 'timeout'."""
    deadline = time.monotonic() + 20 * cpu_seconds + 600  # a child that sleeps forever
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
                return "timeout"
            code = os.waitstatus_to_exitcode(status)
            return {0: "survived", UNPATCHED: "unpatched"}.get(code, "killed")
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "timeout"


class MutantLoop:
    """A pytest plugin: instead of running the session's tests, runs the mutants of `jobs_dir` (claimed one at a
    time through exclusive-create files, so several workers share the work) and appends one JSON line per
    mutant to `out`."""

    def __init__(self, jobs_dir: Path, out: Path, first_chunk: int, deadline: float):
        self.jobs_dir, self.out, self.first_chunk, self.deadline = jobs_dir, out, first_chunk, deadline

    def pytest_runtestloop(self, session):
        by_id = {item.nodeid: item for item in session.items}
        order = {nodeid: i for i, nodeid in enumerate(by_id)}
        jobs = json.loads((self.jobs_dir / "jobs.json").read_text())
        with self.out.open("a") as out:
            # sanity: with no mutant, each file's fastest tests pass in a child (else every kill is suspect)
            for name, tests in jobs["sanity"].items():
                items = [by_id[t] for t in tests if t in by_id]
                why = self.out.with_suffix(".sanity.txt")
                cpu = 60 + 5 * sum(jobs["durations"].get(t, 1.0) for t in tests)
                result = run_in_child(None, None, items, cpu, why)
                if result != "survived":
                    detail = why.read_text() if why.is_file() else ""
                    out.write(json.dumps({"sanity": name, "result": result, "detail": detail}) + "\n")
                    out.flush()
                    return True
            for index, job in enumerate(jobs["mutants"]):
                if time.time() > self.deadline:
                    break
                try:
                    os.close(os.open(self.jobs_dir / f"claim-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    continue
                started = time.monotonic()
                tests = [t for t in job["tests"] if t in by_id]
                first, rest = tests[:self.first_chunk], tests[self.first_chunk:]
                result = "survived" if tests else "not covered"  # its tests were not collected here
                for chunk in (first, sorted(rest, key=order.__getitem__)):
                    if chunk:
                        cpu = 30.0 + 5 * sum(job["durations"].get(t, 1.0) for t in chunk)
                        result = run_in_child(job["module"], job["mutated"], [by_id[t] for t in chunk], cpu,
                                              names=tuple(job.get("names", ())))
                        if result != "survived":
                            break
                out.write(json.dumps({"index": index, "result": result, "tests_run": len(tests),
                                      "missing": len(job["tests"]) - len(tests),
                                      "seconds": round(time.monotonic() - started, 1)}) + "\n")
                out.flush()
        return True


def worker(work: Path, test_modules: list[str], jobs_dir: Path, out: Path, first_chunk: int,
           deadline: float) -> None:
    """In a forked process: one pytest session over the test modules with the mutant loop as its run loop."""
    import pytest
    import torch

    torch.set_num_threads(1)
    os.chdir(work)
    sys.path.insert(0, str(work / "src"))
    for name in [m for m in sys.modules if m == "attnlab" or m.startswith("attnlab.")]:
        del sys.modules[name]  # the copy under work/src, not the checkout, is the one patched
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    pytest.main(["-q", "-s", "-p", "no:cacheprovider", "-m", "not slow", *test_modules],
                plugins=[MutantLoop(jobs_dir, out, first_chunk, deadline)])
