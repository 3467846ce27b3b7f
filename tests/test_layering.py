"""The book's order is the package's order: a module exported by chapter N imports only modules of earlier chapters.

The chapter of a module is the notebook that has its `#| default_exp`, named by the notebook's prefix: `03` for
nbs/03_model.ipynb, `07a` for nbs/07a_export.ipynb (a Part II companion, which comes after chapter 07 and before 08:
sorting the prefixes gives the book's order). The `slm` command's module (`slm.__main__`, from nbs/cli.ipynb) uses
everything and is the one exception. Every `import` and `from` statement counts, at the top
of a file or inside a function, so no import can dodge the rule by hiding in a function body.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMAND = {"__main__"}                          # the slm command: may import any chapter


def chapters() -> dict[str, str]:
    "Module name -> the prefix of the notebook that has it as `default_exp` (`03`, `07a`); prefixes sort in the book's order."
    out = {}
    for nb in sorted((ROOT / "nbs").glob("[0-9][0-9]*_*.ipynb")):
        m = re.search(r"#\|\s*default_exp\s+([\w.]+)", nb.read_text(encoding="utf-8"))
        if m: out[m.group(1)] = nb.name.split("_")[0]
    return out


def imports(path: Path) -> list[tuple[int, str]]:
    "(line, imported slm module) for every import statement in `path` that names a module of the package."
    tree, out = ast.parse(path.read_text(encoding="utf-8")), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level: base = node.module or ""                                      # from .x import y / from . import x
            elif node.module and node.module.split(".")[0] == "slm": base = node.module.partition(".")[2]
            else: continue
            names = [base] if base else [a.name for a in node.names]
            out += [(node.lineno, n.split(".")[0]) for n in names if n]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("slm.")]
    return out


def _rel(f: Path) -> str:
    return str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f)


def forward_imports(pkg: Path, order: dict[str, str]) -> list[str]:
    "Every import in `pkg` that points forward in the chapter order, as 'file:line: module (chapter N) imports module (chapter M)'."
    bad = []
    for f in sorted(pkg.glob("*.py")):
        mod = f.stem
        if mod in COMMAND or mod not in order: continue
        for line, target in imports(f):
            if target in order and order[target] > order[mod]:
                bad.append(f"{_rel(f)}:{line}: {mod} (chapter {order[mod]}) imports {target} (chapter {order[target]})")
            if target in COMMAND: bad.append(f"{_rel(f)}:{line}: {mod} (chapter {order[mod]}) imports the slm command")
    return bad


def test_every_chapter_module_is_known():
    order = chapters()
    assert sorted(v for v in order.values() if v.isdigit()) == [f"{i:02d}" for i in range(10)], order   # 00 … 09, one each
    assert all(re.fullmatch(r"\d\d[a-z]?", v) for v in order.values()), order     # companions: a letter after the number
    assert order.get("export") == "07a", order                                     # the first companion with a module
    modules = {f.stem for f in (ROOT / "slm").glob("*.py")} - {"__init__", "_modidx"} - COMMAND
    assert modules <= set(order), f"modules without a chapter: {sorted(modules - set(order))}"


def test_imports_follow_the_chapters():
    bad = forward_imports(ROOT / "slm", chapters())
    assert not bad, "imports against the chapter order:\n" + "\n".join(bad)


def test_the_check_finds_a_forward_import(tmp_path):
    "The test above can fail: a package whose chapter-03 module imports chapter 09 inside a function is reported with file and line."
    pkg = tmp_path / "slm"; pkg.mkdir()
    (pkg / "model.py").write_text("import math\n\ndef f():\n    from slm.memory import QKMemory\n    return QKMemory\n")
    (pkg / "memory.py").write_text("from .model import f\n")
    (pkg / "training.py").write_text("from . import memory\n")
    (pkg / "export.py").write_text("from slm.training import load_run\nfrom slm.interpretability import f\n")
    bad = forward_imports(pkg, {"model": "03", "training": "05", "export": "07a", "interpretability": "08", "memory": "09"})
    assert len(bad) == 3, bad
    assert bad[0].endswith("export.py:2: export (chapter 07a) imports interpretability (chapter 08)"), bad   # a companion too
    assert bad[1].endswith("model.py:4: model (chapter 03) imports memory (chapter 09)"), bad
    assert "training.py:1: training (chapter 05) imports memory (chapter 09)" in bad[2]
