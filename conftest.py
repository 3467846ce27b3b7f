"""pytest configuration shared by tests/ and the notebooks (nbval).

README command (b) executes each notebook once and gets both notebook checks from that one run:
nbval (`--nbval` in pyproject.toml) runs the cells in order in one Jupyter kernel, fails a cell that
raises (nbdev_test's contract) and fails a cell whose output differs from the committed one (cells
marked `# NBVAL_IGNORE_OUTPUT` only have to run). Two differences between nbval and nbdev are bridged here:

* nbdev's test flags (`tst_flags` in settings.ini: `slow` and `expensive`) and `#| eval: false` mark the cells
  `nbdev_test` does not run; nbval skips the same cells, read with nbdev's own directive parser.
  `pytest --slow` runs the slow ones too (as `nbdev_test --flags slow` does);
* `nbdev_clean` stores notebooks with `execution_count: null`, which nbval reads as "never run" and
  then refuses ("Unrun reference cell has outputs"), so every code cell gets a count again before it runs.

A cell flagged `#| expensive` (torch.compile, several processes) belongs to the suite's `expensive` group, the
pytest marker of that name: README (b), `-m "not expensive"`, deselects those cells and runs the rest of the
notebook; an expression that selects the group (`-m expensive`) runs such a notebook whole, since its expensive
cells need the cells before them. An expensive cell must be a leaf: no later cell may use what it makes.

With several xdist workers, each gets its share of the cores (`OMP_NUM_THREADS`, inherited by the notebook kernels
and the commands the tests start): two workers of two threads each on two cores wait on each other's threads and
run several times slower than two of one thread.
"""
import os

import pytest

EXPENSIVE = "expensive"   # the marker (pyproject.toml) and the nbdev test flag (settings.ini) of the costly group


def _share_the_cores():
    "`OMP_NUM_THREADS` = cores // workers in an xdist worker, unless the caller chose it."
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores()


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the notebook cells flagged with settings.ini's tst_flags")


def _nbdev_skips(cell, flags: set) -> bool:
    "Whether `nbdev_test` skips this code cell (nbdev.test.test_nb's rule): a call of `nbdev_export`, `#| eval: false`, or a directive named in `flags`."
    from fastcore.basics import AttrDict
    from nbdev.process import extract_directives
    if "nbdev_export" + "(" in cell.source: return True
    directives = extract_directives(AttrDict(cell_type="code", source=cell.source), remove=False)
    if directives.get("eval:", [""])[0].lower() == "false": return True
    return bool(flags & directives.keys())


def _is_expensive(cell) -> bool:
    "Whether a code cell carries the `#| expensive` flag."
    return _nbdev_skips(cell, {EXPENSIVE}) and not _nbdev_skips(cell, set())


def _selects_expensive(markexpr: str) -> bool:
    "Whether `-m markexpr` selects an item that has only the `expensive` marker (no expression selects everything)."
    if not markexpr: return True
    from _pytest.mark.expression import Expression
    return Expression.compile(markexpr).evaluate(lambda name, **kw: name == EXPENSIVE)


@pytest.hookimpl(tryfirst=True)   # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(config, items):
    flags = set()
    if not config.getoption("--slow"):
        from nbdev.config import get_config
        flags = set(get_config().tst_flags.split())
    flags.discard(EXPENSIVE)                          # those cells are selected by the marker instead
    whole = _selects_expensive(config.getoption("markexpr"))
    notebooks = {}                                    # notebook path -> its code-cell items
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is None or getattr(cell, "cell_type", None) != "code":
            continue
        notebooks.setdefault(item.path, []).append(item)
        if cell.execution_count is None:
            cell.execution_count = 1
        if _nbdev_skips(cell, flags):
            item.options["skip"] = True
    for cells in notebooks.values():
        costly = [item for item in cells if _is_expensive(item.cell)]
        for item in (cells if whole and costly else costly):
            item.add_marker(EXPENSIVE)
