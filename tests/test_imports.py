"""Imports point down (docs/architecture.md): ops <- layers <- models <- workflows <- cli, with the workflows in one
order (data, convert <- train <- eval <- recurformer, bench, mainjob), read from every module's source. And the
light parts import light: `import slimkv.ops` pulls in neither transformers nor any model code."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "slimkv"

# the helpers every part may use; they import only each other
INFRA = {"__init__", "config", "errors", "io", "device", "machine", "hub", "registration", "configs"}
RANK = {"ops": 1, "layers": 2, "models": 3, "workflow": 4, "cli": 5}
# which workflows a workflow may import (a DAG: train never imports eval; nothing below cli imports cli)
WORKFLOWS: dict[str, set[str]] = {
    "data": set(),
    "convert": set(),
    "train": {"data"},
    "eval": {"data", "train"},
    "recurformer": {"data", "train", "eval"},
    "bench": {"data", "train", "eval"},
    "mainjob": {"data", "train", "eval"},
}
# known edges that break the rules, each owned by someone else's branch; an entry that no longer occurs fails the
# test so that it is removed
KNOWN: set[tuple[str, str]] = set()


def area(parts: list[str]) -> str:
    """"slimkv.eval.niah" split -> "eval"; top-level modules of the infrastructure -> "infra"."""
    head = parts[1] if len(parts) > 1 else "__init__"
    return "infra" if head in INFRA else head


def rank(name: str) -> int:
    return 0 if name == "infra" else RANK["workflow"] if name in WORKFLOWS else RANK[name]


def imports_of(path: Path, root: Path = PACKAGE) -> set[str]:
    """The slimkv areas a module imports, relative imports resolved (imports inside functions included)."""
    package = ["slimkv", *path.relative_to(root).with_suffix("").parts][:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names = [base + (node.module.split(".") if node.module else [])]
                if not node.module:
                    # `from .. import config` names a module; `from .. import __version__` the package itself
                    folder = root.joinpath(*base[1:])
                    names = [base + [alias.name] if (folder / alias.name).is_dir()
                             or (folder / f"{alias.name}.py").is_file() else base for alias in node.names]
            else:
                names = [(node.module or "").split(".")]
        else:
            continue
        found |= {area(name) for name in names if name and name[0] == "slimkv"}
    return found


def violations(root: Path = PACKAGE) -> set[tuple[str, str]]:
    """(file, imported area) for every import against the rules, in the package at `root`."""
    bad = set()
    for path in sorted(root.rglob("*.py")):
        here = area(["slimkv", *path.relative_to(root).with_suffix("").parts])
        for there in imports_of(path, root) - {here}:
            allowed = (rank(there) < rank(here) if rank(here) != RANK["workflow"] or there not in WORKFLOWS
                       else there in WORKFLOWS[here])
            if here == "infra":
                allowed = there == "infra"
            if not allowed:
                bad.add((path.relative_to(root).as_posix(), there))
    return bad


def test_imports_point_down():
    found = violations()
    unexpected = sorted(found - KNOWN)
    assert not unexpected, "imports against the layering (file, imported area): " + repr(unexpected)
    stale = sorted(KNOWN - found)
    assert not stale, f"these known exceptions are gone; remove them from KNOWN: {stale}"


def test_the_checker_sees_each_kind_of_violation(tmp_path):
    files = {
        "ops/gla.py": "from ..models import RodimusConfig\nimport torch\n",       # ops -> models
        "train/loop.py": "from slimkv.eval import perplexity\nfrom ..data import x\n",  # train -> eval
        "eval/niah.py": "def f():\n    from ..cli.main import main\n",             # a workflow -> cli
        "io.py": "from .train import trainer\n",                                  # infra -> a workflow
        "layers/ddts.py": "from ..ops import gla\nfrom .. import config\n",       # allowed
    }
    for name, source in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    assert violations(tmp_path) == {("ops/gla.py", "models"), ("train/loop.py", "eval"), ("eval/niah.py", "cli"),
                                    ("io.py", "train")}


def _fresh(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SRC.parent,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_import_slimkv_ops_stays_light():
    out = _fresh("import sys, slimkv, slimkv.ops.gla, slimkv.ops.window_attn, slimkv.config, slimkv.cli.main\n"
                 "print(sorted(m for m in ('transformers', 'slimkv.models', 'slimkv.recurformer') if m in sys.modules))")
    assert out == "[]"


@pytest.mark.parametrize("first", ["import slimkv; import transformers", "import transformers; import slimkv",
                                   "import slimkv.models", "import slimkv.recurformer",
                                   "from slimkv import RodimusConfig"])
def test_auto_classes_are_registered_however_slimkv_is_imported(first):
    out = _fresh(f"{first}\nfrom transformers import AutoConfig\n"
                 "print(type(AutoConfig.for_model('slimkv_rodimus')).__name__, "
                 "type(AutoConfig.for_model('recurformer')).__name__)")
    assert out == "RodimusConfig RecurFormerConfig"
