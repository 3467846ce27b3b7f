"""Build the docs site's pages without Quarto, and README.md from nbs/index.ipynb.

`nbdev_docs` (which needs Quarto) is how the published site is built. This script builds the same
pages offline from the same input — nbdev's processed notebooks (`nbdev.serve.proc_nbs`: `#| hide`
cells removed, `show_doc` rendered, the title and summary moved to front matter) — and renders them
to plain HTML with nbconvert. CI runs it (tests/test_docs.py) so a chapter that cannot be rendered,
or has lost its title, fails the build.

    python tests/docs_offline.py            # README.md and _site/*.html
    python tests/docs_offline.py --readme   # README.md only
"""
from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
_LINK = re.compile(r"\]\(([\w.-]+)\.ipynb(#[\w-]+)?\)")


def notebook_title(nb_path: Path) -> str:
    "The H1 title of a notebook: the first markdown line starting with '# '."
    nb = nbformat.read(nb_path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "markdown":
            for line in c.source.splitlines():
                if line.startswith("# "): return line[2:].strip()
    raise ValueError(f"{nb_path}: no '# Title' markdown line")


def build_readme(root: Path = ROOT) -> str:
    "Render nbs/index.ipynb to Markdown (links to chapters point into nbs/); returns the text written to README.md."
    from nbconvert import MarkdownExporter
    nb = nbformat.read(root / "nbs" / "index.ipynb", as_version=4)
    nb.cells = [c for c in nb.cells if not re.match(r"\s*#\|\s*hide", c.source)]
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = _LINK.sub(lambda m: f"](nbs/{m.group(1)}.ipynb{m.group(2) or ''})", body)
    body = body.replace("](images/", "](nbs/images/")      # figures committed in nbs/images/
    text = "<!-- Generated from nbs/index.ipynb by tests/docs_offline.py: edit the notebook, not this file. -->\n\n" + body.strip() + "\n"
    (root / "README.md").write_text(text)
    return text


def _front_matter(nb) -> dict:
    "The YAML front matter nbdev puts in a raw first cell (title, description)."
    for c in nb.cells:
        if c.cell_type == "raw" and c.source.startswith("---"):
            return yaml.safe_load(c.source.strip().strip("-")) or {}
    return {}


def build_site(root: Path = ROOT, out: str = "_site") -> list[Path]:
    "Process the notebooks with nbdev and render each to `out/NAME.html`; returns the pages written."
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from nbdev.serve import proc_nbs
    import os
    cwd = os.getcwd()
    os.chdir(root)
    try: proc_nbs(n_workers=0)   # nbdev finds settings.ini from the working directory
    finally: os.chdir(cwd)
    cache = root / "_proc"
    dest = root / out
    shutil.rmtree(dest, ignore_errors=True); dest.mkdir()
    if (root / "nbs" / "images").is_dir(): shutil.copytree(root / "nbs" / "images", dest / "images")
    pages = sorted(cache.glob("*.ipynb"))
    nav = " · ".join(f"[{_front_matter(nbformat.read(p, as_version=4)).get('title', p.stem)}]({p.stem}.html)"
                     for p in pages)
    exporter = HTMLExporter(template_name="lab")
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"}, enabled=True), enabled=True)
    written = []
    for p in pages:
        nb = nbformat.read(p, as_version=4)
        fm = _front_matter(nb)
        title = fm.get("title", p.stem)
        cells = []
        for c in nb.cells:
            if c.cell_type == "raw": continue
            if c.cell_type == "markdown": c.source = _LINK.sub(lambda m: f"]({m.group(1)}.html{m.group(2) or ''})", c.source)
            if c.cell_type == "code":
                if re.search(r"^#\|\s*echo:\s*false", c.source, re.M): c.metadata.setdefault("tags", []).append("remove_input")
                c.source = "\n".join(l for l in c.source.splitlines() if not l.startswith("#|"))
            cells.append(c)
        head = f"{nav}\n\n# {title}\n" + (f"\n> {fm['description']}\n" if fm.get("description") else "")
        nb.cells = [nbformat.v4.new_markdown_cell(head)] + cells
        html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        page = dest / f"{p.stem}.html"
        page.write_text(html)
        written.append(page)
    return written


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", action="store_true", help="only regenerate README.md")
    a = ap.parse_args()
    build_readme()
    print("wrote README.md")
    if not a.readme:
        for p in build_site(): print("wrote", p.relative_to(ROOT))
