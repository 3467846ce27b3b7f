"""pytest configuration shared by tests/ and the notebooks (nbval).

nbval re-executes every notebook in nbs/ and compares each cell's fresh output with the committed one.
Two mismatches between nbval and nbdev are bridged here:

* `nbdev_clean` stores notebooks with `execution_count: null`, which nbval reads as "never run" and
  then refuses ("Unrun reference cell has outputs") — so every code cell gets a count again before it runs;
* nbdev's test flags (`#| slow`, from `tst_flags` in settings.ini) and `#| eval: false` mark cells that
  `nbdev_test` does not run; nbval skips the same cells.
"""
import re

_SKIP = re.compile(r"^\s*#\|\s*(slow\b|eval:\s*false\b)", re.M)


def pytest_collection_modifyitems(config, items):
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is None or getattr(cell, "cell_type", None) != "code":
            continue
        if cell.execution_count is None:
            cell.execution_count = 1
        if _SKIP.search(cell.source):
            item.options["skip"] = True
