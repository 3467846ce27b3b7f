"""README command (b) executes each notebook once, in pytest through nbval, and the root conftest.py gives that
run nbdev_test's rules. These tests hold the two together without executing anything."""
import importlib.util
import json
from pathlib import Path

from execnb.shell import CaptureShell
from fastcore.basics import AttrDict as _Cell
from nbdev.config import get_config
from nbdev.test import test_nb as nbdev_test_nb   # renamed so pytest does not collect it

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
root_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(root_conftest)


def test_pytest_skips_exactly_the_cells_nbdev_test_skips(monkeypatch):
    flags = set(get_config().tst_flags.split())
    assert flags, "settings.ini names no tst_flags"
    seen = []
    def record(self, nb, exc_stop=False, preproc=None, **kw):   # nbdev_test's decisions, cell by cell, without running a cell
        seen.extend(bool(preproc(c)) for c in nb.cells if c.cell_type == "code")
    monkeypatch.setattr(CaptureShell, "run_all", record)
    monkeypatch.setenv("IN_TEST", "1")
    total_skipped = 0
    for path in NOTEBOOKS:
        seen.clear()
        ok, _ = nbdev_test_nb(path, skip_flags=sorted(flags), showerr=False)
        assert ok, path.name
        cells = [_Cell(c, source="".join(c["source"])) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        ours = [root_conftest._nbdev_skips(c, flags) for c in cells]
        assert ours == seen, f"{path.name}: pytest and nbdev_test skip different cells"
        total_skipped += sum(ours)
    assert total_skipped > 0, "no notebook has a flagged cell: the comparison above checked nothing"


def test_slow_option_keeps_the_flagged_cells():
    cell = _Cell(cell_type="code", source="#| slow\nx = 1")
    assert root_conftest._nbdev_skips(cell, {"slow"}) and not root_conftest._nbdev_skips(cell, set())
    assert root_conftest._nbdev_skips(_Cell(cell_type="code", source="#| eval: false\nx = 1"), set())


class _Item:
    "A collected notebook cell, as far as the root conftest's hook reads and writes it."
    def __init__(self, path, source):
        self.path, self.cell, self.options, self.marks = path, _Cell(cell_type="code", source=source, execution_count=None), {}, []
    def add_marker(self, name): self.marks.append(name)


class _Config:
    def __init__(self, markexpr): self.opts = {"--slow": False, "markexpr": markexpr}
    def getoption(self, name): return self.opts[name]


def _collect(markexpr):
    items = [_Item("a.ipynb", "x = 1"), _Item("a.ipynb", "#| expensive\ny = x"), _Item("a.ipynb", "#| slow\nz = 2"),
             _Item("b.ipynb", "w = 3")]
    root_conftest.pytest_collection_modifyitems(_Config(markexpr), items)
    return [(bool(i.marks), i.options.get("skip", False)) for i in items]


def test_expensive_cells_leave_readme_b_and_take_their_notebook_into_the_group():
    # README (b): only the flagged cell carries the marker (so -m "not expensive" deselects it); slow stays skipped
    assert _collect("not expensive") == [(False, False), (True, False), (False, True), (False, False)]
    # the group: every cell of a notebook with an expensive cell, which then runs whole; other notebooks stay out
    for expr in ("expensive", "gpu or expensive", ""):
        assert _collect(expr) == [(True, False), (True, False), (True, True), (False, False)], expr
    assert _collect("gpu") == _collect("not expensive")


def test_the_expensive_flag_is_a_test_flag_and_flags_real_cells():
    assert root_conftest.EXPENSIVE in get_config().tst_flags.split()      # nbdev_test skips those cells too
    flagged = [p.name for p in NOTEBOOKS for c in json.loads(p.read_text())["cells"]
               if c["cell_type"] == "code" and root_conftest._is_expensive(_Cell(c, source="".join(c["source"])))]
    assert flagged, "no notebook cell is flagged #| expensive: the group's notebook part checks nothing"
