"""Give every notebook in nbs/ the project's kernel, so JupyterLab opens it ready to run and unmodified.

JupyterLab asks "Select Kernel" for a notebook without `kernelspec` metadata, and marks a notebook
modified as soon as its kernel starts if the notebook's `kernelspec` or `language_info` differ from
what the running kernel reports. `nbdev_clean` keeps `kernelspec` but sets its `display_name` to its
`name`, so the kernel's own name and display name must be equal: the project's kernel is `slm`,
installed into the virtual environment with

    .venv/bin/python -m ipykernel install --sys-prefix --name slm --display-name slm

`language_info` is kept by `nbdev_clean` through `allowed_metadata_keys` in settings.ini; it records
the Python version of the interpreter that runs this script (a different Python writes its own version
the first time a notebook is saved).

    python tests/nb_metadata.py            # write the metadata into nbs/*.ipynb where it differs
    python tests/nb_metadata.py --check    # exit 1 if a notebook lacks the project's kernel
    python tests/nb_metadata.py DIR        # the notebooks in DIR instead of nbs/

Writing is idempotent and goes through nbdev's own cleaner, so `nbdev_clean` leaves the result unchanged.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "slm"
KERNELSPEC = {"display_name": KERNEL, "language": "python", "name": KERNEL}


def language_info() -> dict:
    "What an ipykernel on this interpreter reports as `language_info` (what JupyterLab writes on connecting)."
    return {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py", "mimetype": "text/x-python",
            "name": "python", "nbconvert_exporter": "python", "pygments_lexer": "ipython3",
            "version": platform.python_version()}


def problems(nb: dict) -> list[str]:
    "What keeps JupyterLab from opening notebook `nb` with the project's kernel (empty when nothing does)."
    md, out = nb.get("metadata", {}), []
    if md.get("kernelspec") != KERNELSPEC: out.append(f"kernelspec is {md.get('kernelspec')!r}, not {KERNELSPEC!r}")
    li = md.get("language_info") or {}
    if {k: v for k, v in li.items() if k != "version"} != {k: v for k, v in language_info().items() if k != "version"}:
        out.append("language_info is missing or not Python's")
    return out


def apply(nb: dict) -> dict:
    "Set the project's kernelspec and this interpreter's language_info in `nb` (in place), keeping a recorded version."
    md = nb.setdefault("metadata", {})
    md["kernelspec"] = dict(KERNELSPEC)
    old = md.get("language_info") or {}
    md["language_info"] = {**language_info(), **({"version": old["version"]} if old.get("version") else {})}
    return nb


def write(path: Path) -> bool:
    "Apply the metadata to the notebook at `path` and clean it as `nbdev_clean` would; True if the file changed."
    from execnb.nbio import dict2nb, write_nb
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    cfg = get_config(path=ROOT)
    before = path.read_text(encoding="utf-8")
    nb = dict2nb(apply(json.loads(before)))
    clean_nb(nb, cfg.clear_all, cfg.get("allowed_metadata_keys").split(), cfg.get("allowed_cell_metadata_keys").split(), cfg.clean_ids)
    write_nb(nb, path)
    return path.read_text(encoding="utf-8") != before


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=str(ROOT / "nbs"), help="folder of notebooks (default: nbs/)")
    ap.add_argument("--check", action="store_true", help="only report notebooks that lack the metadata")
    a = ap.parse_args(argv)
    nbs = sorted(Path(a.folder).glob("*.ipynb"))
    if a.check:
        bad = {p.name: problems(json.loads(p.read_text(encoding="utf-8"))) for p in nbs}
        bad = {k: v for k, v in bad.items() if v}
        for name, why in bad.items(): print(f"{name}: {'; '.join(why)}")
        if bad: print("fix: python tests/nb_metadata.py")
        return 1 if bad else 0
    for p in nbs:
        if write(p): print("wrote", p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
