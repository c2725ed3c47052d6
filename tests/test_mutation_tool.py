"""benchmarks/mutation.py: the mutants it makes and the tests it picks for each (no mutant is run here)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import mutation  # noqa: E402

SOURCE = '''"""doc"""
LIMIT = 4


def f(x, scale=2.0):
    """doc"""
    if x > LIMIT:
        raise ValueError(f"too big: {x + 1}")
    return x * scale
'''


def by_line(mutants):
    return {(m["line"], m["mutation"]) for m in mutants}


def test_mutants_of_a_small_source():
    mutants = mutation.mutations(SOURCE)
    assert by_line(mutants) == {(2, "4 -> 5"), (5, "2.0 -> 4.0"), (7, "Gt -> GtE"), (9, "Mult -> Div")}
    fallback = {m["line"]: m["fallback"] for m in mutants}
    # a module constant: the whole file's tests; a default value: its function body's; a body line: none
    assert fallback == {2: (1, 9), 5: (6, 9), 7: None, 9: None}
    for m in mutants:
        compile(m["mutated"], "<mutant>", "exec")
        assert m["mutated"] != SOURCE


def test_tests_are_picked_by_the_lines_they_execute_fastest_first():
    lines = {7: {"t.py::a": {"call"}, "t.py::b": {"call"}}, 9: {"t.py::b": {"call"}, "u.py::c": {"setup"}}}
    durations = {"t.py::a": 2.0, "t.py::b": 1.0, "u.py::c": 0.5, "u.py::d": 0.1, "v.py::e": 0.1}
    mutants = {(m["line"], m["mutation"]): m for m in mutation.mutations(SOURCE)}
    assert mutation.select_tests(mutants[7, "Gt -> GtE"], lines, durations, set()) == ["t.py::b", "t.py::a"]
    # a line run in a fixture's setup: every test of that module (they share the fixture)
    assert mutation.select_tests(mutants[9, "Mult -> Div"], lines, durations, set()) == ["u.py::d", "u.py::c",
                                                                                          "t.py::b"]
    # a default value runs at import: the tests of its function's body; failing tests are left out
    assert mutation.select_tests(mutants[5, "2.0 -> 4.0"], lines, durations, {"t.py::a"}) == ["u.py::d", "u.py::c",
                                                                                               "t.py::b"]
    assert mutation.select_tests(mutants[7, "Gt -> GtE"], {}, durations, set()) == []  # not covered


PATCHED = '''from dataclasses import dataclass
import functools
LIMIT = 4


@dataclass
class Cfg:
    size: int = 3


class Base:
    def f(self):
        return 1


class A(Base):
    SCALE = 2.0

    def f(self, k=1):
        return super().f() + k * self.SCALE

    @property
    def p(self):
        return LIMIT + 1

    @staticmethod
    def s(x):
        return x - 1


def deco(fn):
    @functools.wraps(fn)
    def w(*a):
        return fn(*a)
    return w


@deco
def g(x, y=2):
    return x * y
'''


def test_every_mutant_is_patched_into_the_live_module(tmp_path, monkeypatch):
    """mutation_inplace.apply: objects made before the patch (an instance, a decorated function, a name another
    module imported) see each mutant: method bodies (with super()), properties, static methods, decorated
    functions, default values, dataclass defaults, class and module constants."""
    import importlib

    import mutation_inplace

    (tmp_path / "mpkg").mkdir()
    (tmp_path / "mpkg" / "__init__.py").write_text("")
    (tmp_path / "mpkg" / "m.py").write_text(PATCHED)
    (tmp_path / "mpkg" / "user.py").write_text("from mpkg.m import LIMIT, g\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def observe():
        m, user = importlib.import_module("mpkg.m"), importlib.import_module("mpkg.user")
        a = m.A()
        return lambda: (a.f(), a.p, a.s(5), user.g(3), m.Cfg().size, user.LIMIT, m.A.SCALE)

    changes = {}
    for mutant in mutation.mutations(PATCHED):
        for name in [n for n in sys.modules if n.startswith("mpkg")]:
            del sys.modules[name]
        seen = observe()
        before = seen()
        mutation_inplace.apply("mpkg.m", mutant["mutated"])
        after = seen()
        changes[mutant["line"], mutant["mutation"]] = [i for i, (x, y) in enumerate(zip(before, after)) if x != y]
    for name in [n for n in sys.modules if n.startswith("mpkg")]:
        del sys.modules[name]
    assert before == (3.0, 5, 4, 6, 3, 4, 2.0)
    assert all(changes.values()), {k: v for k, v in changes.items() if not v}  # every mutant shows
    assert changes[3, "4 -> 5"] == [1, 5]  # the module constant, and where it was imported by name
    assert changes[8, "3 -> 4"] == [4]  # a dataclass default
    assert changes[17, "2.0 -> 4.0"] == [0, 6]  # a class constant
    assert changes[39, "2 -> 3"] == [3]  # a default value behind a decorator


def test_nested_operators_at_one_column_and_chained_comparisons_are_told_apart():
    source = "def f(a, b, c):\n    return a + b + c, 0 < a < b\n"
    names = [(m["line"], m["col"], m["mutation"]) for m in mutation.mutations(source)]
    assert len(names) == len(set(names))
    assert {n for _, _, n in names} >= {"Add -> Sub", "Add -> Sub #2", "Lt -> LtE (comparison 1)",
                                         "Lt -> LtE (comparison 2)"}
