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
