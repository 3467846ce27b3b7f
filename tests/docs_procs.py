"""nbdev processors that turn the chapters into docs pages, shared by both site builds.

nbdev processes every notebook before a site is rendered (`nbdev.serve.proc_nbs`: `#| hide` cells go,
`show_doc` cells are run, backticked names become links). `SiteFilter` adds four steps to nbdev's own,
so that a page shows what a reader needs and none of the test plumbing:

* `strip_test_markers`: nbval's `# NBVAL_IGNORE_OUTPUT`-style comments are removed from code;
* `hide_temp_paths`: folders that `tempfile.mkdtemp` made for a run are shown as `<tmp>`;
* `fold_exports`: exported source is folded (nbdev marks it `code-fold: show`, open; here it is closed);
* `widget_snapshots`: an ipywidgets output cannot render without a kernel, so it is replaced by the
  pictures that its saved widget state holds (JupyterLab saves them with the notebook).

`site_filter()` installs `SiteFilter` in place of nbdev's `FilterDefaults` while nbdev processes the
notebooks (the offline build and the Quarto build in `docs_offline.py` both use it).
"""
from __future__ import annotations

import contextlib
import re
import tempfile

from nbdev.process import Processor
from nbdev.processors import FilterDefaults

_NBVAL = re.compile(r"^[ \t]*#[ \t]*NBVAL_[A-Z_]+[ \t]*\n?", re.M)
# `tempfile.mkdtemp(prefix=...)` names: the prefix, then 8 characters from `[a-z0-9_]`.
_TEMP_ROOTS = sorted({"/tmp", "/var/tmp", tempfile.gettempdir()}, key=len, reverse=True)
_TEMP_DIR = re.compile("(?:" + "|".join(map(re.escape, _TEMP_ROOTS)) + r")/(?:tmp|[\w.-]*[-_])[a-z0-9_]{8}(?![\w.-])")
TEMP_SHOWN_AS = "<tmp>"
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def strip_test_markers(cell):
    "Remove nbval's marker comments (`# NBVAL_IGNORE_OUTPUT`, `# NBVAL_SKIP`, ...) from a code cell."
    if cell.cell_type == "code": cell.source = _NBVAL.sub("", cell.source)


def hide_temp_paths(cell):
    "Show the temporary folders that made a cell's outputs as `<tmp>` (they name nothing a reader has)."
    for o in cell.get("outputs", []):
        if "text" in o: o["text"] = _TEMP_DIR.sub(TEMP_SHOWN_AS, "".join(o["text"]))
        for mime, v in o.get("data", {}).items():
            if mime.startswith("text/"): o["data"][mime] = _TEMP_DIR.sub(TEMP_SHOWN_AS, "".join(v))


def fold_exports(cell):
    "Fold exported source: nbdev's `add_fold` shows it open (`code-fold: show`); a reader opens it on demand."
    if cell.cell_type == "code": cell.source = cell.source.replace("#| code-fold: show\n", "#| code-fold: true\n", 1)


class widget_snapshots(Processor):
    "Replace each ipywidgets output with the images its saved widget state holds (or a note when it holds none)."
    def begin(self):
        self.state = ((self.nb.metadata.get("widgets") or {}).get(_WIDGET_STATE) or {}).get("state", {})

    def _images(self, model_id, seen=()):
        "Image outputs stored by Output widgets anywhere inside widget `model_id`, in display order."
        m = self.state.get(model_id)
        if m is None or model_id in seen: return []
        st, seen = m.get("state", {}), (*seen, model_id)
        found = [o for o in st.get("outputs", []) if any(k.startswith("image/") for k in o.get("data", {}))]
        for child in st.get("children", []):
            found += self._images(str(child).removeprefix("IPY_MODEL_"), seen)
        return found

    def cell(self, cell):
        if cell.cell_type != "code": return
        outs = []
        for o in cell.get("outputs", []):
            view = o.get("data", {}).get(_WIDGET_VIEW)
            if view is None: outs.append(o); continue
            images = self._images(view["model_id"])
            note = ("*A static picture of the interactive widget; run the notebook in JupyterLab to use its controls.*"
                    if images else "*An interactive widget: run the notebook in JupyterLab to use it.*")
            outs += [{"output_type": "display_data", "metadata": {}, "data": dict(i["data"])} for i in images]
            outs.append({"output_type": "display_data", "metadata": {}, "data": {"text/markdown": note}})
        cell.outputs = outs


class SiteFilter(FilterDefaults):
    "nbdev's default processors, then this project's (see the module docstring)."
    def xtra_procs(self):
        return [*super().xtra_procs(), strip_test_markers, hide_temp_paths, fold_exports, widget_snapshots]


@contextlib.contextmanager
def site_filter():
    "Within this block nbdev processes notebooks with `SiteFilter` (call `proc_nbs` with `n_workers=0`)."
    import nbdev.serve
    old, nbdev.serve.FilterDefaults = nbdev.serve.FilterDefaults, SiteFilter
    try: yield
    finally: nbdev.serve.FilterDefaults = old
