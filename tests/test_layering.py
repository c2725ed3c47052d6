"""The layering of STYLE.md: each part of attnlab imports only from parts below it (or from itself).

io -> layers -> models -> decoding -> data -> training -> applications -> serve, bench -> commands.
Every import is counted, at module level or inside a function, so a lazy import cannot hide a
back-door. A new top-level module or package must be placed in LAYERS before it can be imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "attnlab"

# part (first component under attnlab) -> layer; lower numbers are further down
LAYERS = {
    "io": 0, "device": 0, "hub": 0,
    "layers": 1, "config": 1,
    "models": 2, "quantize": 2, "__init__": 2,  # attnlab/__init__.py exports the models
    "decoding": 3,
    "data": 4, "tasks": 4, "metrics": 4,
    "training": 5,
    "translate": 6, "caption": 6, "run_dir": 6, "export": 6, "viz": 6, "pipelines": 6,
    "serve": 7, "bench": 7,
    "commands": 8, "cli": 8, "__main__": 8,
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, absolute module) of every attnlab import in one file, relative imports resolved."""
    module = _module_name(path, root)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from attnlab import x` imports the part x when x is a part
            targets = [f"{name}.{a.name}" if name == "attnlab" and a.name in LAYERS else name for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, t) for t in targets if t == "attnlab" or t.startswith("attnlab.")]
    return found


def _exists(module: str, root: Path) -> bool:
    """An attnlab module (a file or a package) of that name is there."""
    where = root.parent.joinpath(*module.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def violations(root: Path = SRC) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        own = _part(module)
        if own not in LAYERS:
            out.append(f"{path.relative_to(root.parent)}: part '{own}' has no place in LAYERS")
            continue
        for line, target in imports_of(path, root):
            if not _exists(target, root):
                out.append(f"{path.relative_to(root.parent)}:{line}: imports {target}, which does not exist")
                continue
            other = _part(target)
            if other == own:
                continue
            if other not in LAYERS:
                out.append(f"{path.relative_to(root.parent)}:{line}: imports {target}, which has no layer")
            elif LAYERS[other] > LAYERS[own]:
                out.append(f"{path.relative_to(root.parent)}:{line}: {own} (layer {LAYERS[own]}) imports "
                           f"{target} (layer {LAYERS[other]}, above it)")
    return out


def test_every_import_points_down():
    assert violations() == []


def test_every_module_says_its_place_in_the_layering():
    missing = [str(p.relative_to(SRC.parent)) for p in sorted(SRC.rglob("*.py"))
               if "Place in the layering" not in (ast.get_docstring(ast.parse(p.read_text())) or "")]
    assert missing == []


def test_an_upward_import_is_caught(tmp_path):
    # the check itself can fail: a layers module importing the training loop, lazily inside a function
    pkg = tmp_path / "attnlab"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "training").mkdir()
    for name in ("__init__.py", "io.py", "training/__init__.py", "training/loop.py"):
        (pkg / name).write_text("")
    (pkg / "layers" / "__init__.py").write_text("from . import bad\n")
    (pkg / "layers" / "bad.py").write_text("def f():\n    from attnlab.training.loop import Trainer\n")
    (pkg / "layers" / "ok.py").write_text("from ..io import sha256\nfrom . import bad\n")
    (pkg / "nowhere.py").write_text("")
    (pkg / "layers" / "moved.py").write_text("from attnlab.layers.gone import x\n")
    found = violations(pkg)
    assert "attnlab/layers/moved.py:1: imports attnlab.layers.gone, which does not exist" in found
    assert any("layers/bad.py:2: layers (layer 1) imports attnlab.training.loop" in v for v in found)
    assert any("nowhere" in v and "no place" in v for v in found)
    assert not any("ok.py" in v for v in found)


@pytest.mark.parametrize("source, expected", [
    ("from .. import io\n", "attnlab.io"),
    ("from attnlab import training\n", "attnlab.training"),
    ("import attnlab.serve.app\n", "attnlab.serve.app"),
])
def test_relative_and_package_imports_resolve(tmp_path, source, expected):
    pkg = tmp_path / "attnlab" / "layers"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text(source)
    assert [t for _, t in imports_of(pkg / "x.py", tmp_path / "attnlab")] == [expected]
