"""pytest configuration shared by tests/ and the notebooks (nbval).

README command (b) executes each notebook once and gets both notebook checks from that one run:
nbval (`--nbval` in pyproject.toml) runs the cells in order in one Jupyter kernel, fails a cell that
raises (nbdev_test's contract) and fails a cell whose output differs from the committed one (cells
marked `# NBVAL_IGNORE_OUTPUT` only have to run). Two differences between nbval and nbdev are bridged here:

* nbdev's test flags (`tst_flags` in settings.ini, here `slow`) and `#| eval: false` mark the cells
  `nbdev_test` does not run; nbval skips the same cells, read with nbdev's own directive parser.
  `pytest --slow` runs them too (as `nbdev_test --flags slow` does);
* `nbdev_clean` stores notebooks with `execution_count: null`, which nbval reads as "never run" and
  then refuses ("Unrun reference cell has outputs"), so every code cell gets a count again before it runs.
"""


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


def pytest_collection_modifyitems(config, items):
    flags = set()
    if not config.getoption("--slow"):
        from nbdev.config import get_config
        flags = set(get_config().tst_flags.split())
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is None or getattr(cell, "cell_type", None) != "code":
            continue
        if cell.execution_count is None:
            cell.execution_count = 1
        if _nbdev_skips(cell, flags):
            item.options["skip"] = True
