"""Build README.md from nbs/index.ipynb, the docs site offline, and the published site with Quarto.

The published site is nbdev's: Quarto renders nbdev's processed notebooks with `_quarto.yml`. Quarto
cannot be installed everywhere, so the same processed notebooks (see `docs_procs.py`) are also built
into an offline site with Material for MkDocs (config in `docs_site/`): the same pages, names, titles,
sidebar order (the page list in `_quarto.yml`), symbol links and anchors, searchable and readable
without network access. CI builds it and checks it in a browser (tests/test_docs*.py).

    python tests/docs_offline.py            # README.md and the offline site in _site/
    python tests/docs_offline.py --readme   # README.md only
    python tests/docs_offline.py --quarto   # the published site in _docs/ (needs Quarto)

Run `--quarto` rather than `nbdev_docs`: without Quarto, `nbdev_docs` tries to install it with sudo
and then runs `pip install -e ".[dev]"` with whichever `pip` comes first on PATH, which outside the
virtual environment pulls an unpinned torch. `--quarto` refuses to start without Quarto, puts this
environment's `bin/` first on PATH, applies this project's processors, and leaves README.md alone.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
SITE_CONFIG = Path(__file__).resolve().parent / "docs_site"
_LINK = re.compile(r"\]\(([\w.-]+)\.ipynb(#[\w.-]+)?\)")
_DIRECTIVE = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")
_ANSI = re.compile(r"\x1B(?:[@-Z\\-_]|\[[0-?]*[ -/]*[@-~])")


# ---------------------------------------------------------------------------------------------- pages

def notebook_title(nb_path: Path) -> str:
    "The H1 title of a notebook: the first markdown line starting with '# '."
    nb = nbformat.read(nb_path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "markdown":
            for line in c.source.splitlines():
                if line.startswith("# "): return line[2:].strip()
    raise ValueError(f"{nb_path}: no '# Title' markdown line")


def site_nav(root: Path = ROOT) -> list[tuple[str | None, list[tuple[str, str | None]]]]:
    """The sidebar of `_quarto.yml` (`website.sidebar.contents`) as [(section title or None, [(notebook, label or None)])]:
    a page listed at the top level is a section of its own with no title; a label is the entry's `text`."""
    cfg = yaml.safe_load((root / "_quarto.yml").read_text())
    def entry(p) -> tuple[str, str | None]: return (p, None) if isinstance(p, str) else (p["href"], p.get("text"))
    return [(None, [entry(p)]) if isinstance(p, str) or "href" in p else (p["section"], [entry(q) for q in p["contents"]])
            for p in cfg["website"]["sidebar"]["contents"]]


def site_pages(root: Path = ROOT) -> list[str]:
    "The site's pages in sidebar order: the notebooks listed under `website.sidebar.contents` in `_quarto.yml`."
    return [nb for _, entries in site_nav(root) for nb, _ in entries]


def chapter_table(root: Path = ROOT) -> dict[str, str]:
    "Chapter titles as the home page's chapter table gives them: notebook stem -> link text."
    nb = nbformat.read(root / "nbs" / "index.ipynb", as_version=4)
    rows = [l for c in nb.cells if c.cell_type == "markdown" for l in c.source.splitlines() if l.startswith("|")]
    return {m.group(2): m.group(1) for l in rows for m in re.finditer(r"\[([^\]]+)\]\(([\w-]+)\.ipynb\)", l)}


def pandoc_slug(value: str, separator: str = "-") -> str:
    "A heading's id as Pandoc (Quarto) makes it, so nbdev's `page.html#symbol` links land: `CharTokenizer.encode` -> `chartokenizer.encode`."
    s = unicodedata.normalize("NFKC", value).lower().strip()
    s = re.sub(r"[^\w\s.-]", "", s)
    s = re.sub(r"\s+", separator, s)
    return re.sub(r"^[^a-z]+", "", s) or "section"


# --------------------------------------------------------------------------------------------- README

def _readme_cells(nb):
    "index.ipynb's cells as the README shows them: `#| hide` cells dropped, `#| echo: false` cells replaced by their Markdown output (the generated tables)."
    for c in nb.cells:
        if re.match(r"\s*#\|\s*hide", c.source): continue
        if c.cell_type == "code" and re.search(r"^#\|\s*echo:\s*false", c.source, re.M):
            md = "\n\n".join(o.get("data", {}).get("text/markdown", "") for o in c.get("outputs", []))
            if md.strip(): yield nbformat.v4.new_markdown_cell(md)
            continue
        yield c


def build_readme(root: Path = ROOT) -> str:
    "Render nbs/index.ipynb to Markdown (links to chapters point into nbs/); returns the text written to README.md."
    from nbconvert import MarkdownExporter
    nb = nbformat.read(root / "nbs" / "index.ipynb", as_version=4)
    nb.cells = list(_readme_cells(nb))
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = _LINK.sub(lambda m: f"](nbs/{m.group(1)}.ipynb{m.group(2) or ''})", body)
    body = body.replace("](images/", "](nbs/images/")      # figures committed in nbs/images/
    text = "<!-- Generated from nbs/index.ipynb by tests/docs_offline.py: edit the notebook, not this file. -->\n\n" + body.strip() + "\n"
    (root / "README.md").write_text(text)
    return text


# --------------------------------------------------------------------------------- processed notebooks

@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try: yield
    finally: os.chdir(old)


def process_notebooks(root: Path = ROOT) -> Path:
    "Run nbdev's docs processing (with this project's processors, `docs_procs.SiteFilter`) over nbs/ into `_proc/`."
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from docs_procs import site_filter
    from nbdev.serve import proc_nbs
    with _cwd(root), site_filter():       # nbdev finds settings.ini from the working directory
        proc_nbs(n_workers=0, force=True)
    return root / "_proc"


def _front_matter(nb) -> dict:
    "The YAML front matter nbdev puts in a raw first cell (title, description, output-file)."
    for c in nb.cells:
        if c.cell_type == "raw" and c.source.startswith("---"):
            return yaml.safe_load(c.source.strip().strip("-")) or {}
    return {}


# ------------------------------------------------------------------------------ notebook -> Markdown

def _fence(text: str, lang: str = "", attrs: str = "") -> str:
    "A fenced code block that no backtick run inside `text` can close."
    ticks = "`" * max(3, 1 + max((len(r) for r in re.findall(r"`+", text)), default=0))
    info = f"{{.{lang}{attrs}}}" if attrs else lang
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}"


class PageWriter:
    "Turns one processed notebook into a Markdown page for the site (see `page_markdown`)."

    def __init__(self, nb, stem: str, out_dir: Path, page_of: dict[str, str], doc_url: str):
        self.nb, self.stem, self.out_dir, self.page_of, self.doc_url = nb, stem, out_dir, page_of, doc_url
        self.n_files = 0

    def links(self, md: str) -> str:
        "Point links at the site's pages: `00_tokenizer.ipynb#x` and nbdev's absolute `.../tokenizer.html#x` both become `tokenizer.md#x`."
        md = _LINK.sub(lambda m: f"]({self.page_of.get(m.group(1), m.group(1))}.md{m.group(2) or ''})", md)
        return re.sub(re.escape(self.doc_url) + r"([\w.-]+)\.html", r"\1.md", md)

    def _file(self, data: str, ext: str, binary: bool) -> str:
        "Write an output's file next to the page; returns its relative path."
        self.n_files += 1
        name = f"{self.stem}_files/output-{self.n_files}.{ext}"
        (self.out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        if binary: (self.out_dir / name).write_bytes(base64.b64decode(data))
        else: (self.out_dir / name).write_text(data)
        return name

    def output(self, o, asis: bool) -> str:
        "One cell output as Markdown: text in a boxed block, figures as image files, Markdown and HTML as they are."
        kind = o.get("output_type")
        if kind == "stream":
            return _fence(_ANSI.sub("", "".join(o.get("text", ""))), "text", " .cell-output" + (" .stderr" if o.get("name") == "stderr" else ""))
        if kind == "error":
            return _fence(_ANSI.sub("", "\n".join(o.get("traceback", []))), "text", " .cell-output .error")
        data = o.get("data", {})
        for mime, ext in (("image/png", "png"), ("image/jpeg", "jpg")):
            if mime in data: return f"![]({self._file(data[mime], ext, binary=True)}){{ .cell-output-figure }}"
        if "image/svg+xml" in data: return f"![]({self._file(''.join(data['image/svg+xml']), 'svg', binary=False)})"
        if "text/markdown" in data:
            md = self.links("".join(data["text/markdown"]))
            return md if asis else f'<div class="cell-output" markdown>\n\n{md}\n\n</div>'
        if "text/html" in data: return f'<div class="cell-output">\n{"".join(data["text/html"])}\n</div>'
        if "text/plain" in data: return _fence("".join(data["text/plain"]), "text", " .cell-output")
        return ""

    def code_cell(self, c) -> str:
        "A code cell: its source (folded when it is exported code, hidden when `echo: false`), then its outputs."
        opts, lines = {}, []
        for line in c.source.splitlines():
            m = _DIRECTIVE.match(line)
            if m: opts[m.group(1)] = m.group(2).strip("'\"")
            elif not line.startswith("#|"): lines.append(line)
        if opts.get("include") == "false": return ""
        src = "\n".join(lines).strip("\n")
        parts = []
        if src.strip() and opts.get("echo") != "false":
            block = _fence(src, "python")
            if opts.get("code-fold") in ("true", "show"):
                summary = opts.get("code-summary", "Code")
                parts.append(f"/// details | {summary}\n    type: source\n" + ("    open: true\n" if opts["code-fold"] == "show" else "") + f"\n{block}\n///")
            else: parts.append(block)
        if opts.get("output") != "false":
            parts += [self.output(o, asis=opts.get("output") == "asis") for o in c.get("outputs", [])]
        return "\n\n".join(p for p in parts if p)

    def page(self) -> str:
        "The whole page: front matter, the title and description, then every cell."
        fm = _front_matter(self.nb)
        title, desc = fm.get("title", self.stem), fm.get("description")
        head = "---\n" + yaml.safe_dump({"title": title.replace("`", ""), **({"description": desc} if desc else {})}, allow_unicode=True) + "---\n\n"
        head += f"# {title}\n" + (f"\n{desc}\n{{ .page-description }}\n" if desc else "")
        body = []
        for c in self.nb.cells:
            if c.cell_type == "markdown": body.append(self.links(c.source))
            elif c.cell_type == "code": body.append(self.code_cell(c))
        return head + "\n\n" + "\n\n".join(b for b in body if b.strip()) + "\n"


def heading_ids(md: str) -> set[str]:
    "The ids the site gives the headings of a Markdown page (code blocks skipped)."
    md = re.sub(r"^(`{3,}).*?^\1", "", md, flags=re.M | re.S)
    ids = set()
    for h in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*$", md, re.M):
        h = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", re.sub(r"\{[^}]*\}\s*$", "", h))
        ids.add(pandoc_slug(h.replace("`", "").replace("*", "")))
    return ids


def unlink_missing_anchors(texts: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """Turn links to `page.md#anchor` where the page has no such heading back into plain names.

    nbdev links every backticked name its index knows, also private helpers and methods that no
    `show_doc` documents; such a link would lead nowhere. Returns the new texts and the names unlinked."""
    ids = {name: heading_ids(t) for name, t in texts.items()}
    dropped = set()
    def fix(m):
        page, anchor = m.group(2), m.group(3)
        if page not in ids or anchor in ids[page]: return m.group(0)
        dropped.add(m.group(1).strip("`"))
        return m.group(1)
    link = re.compile(r"\[(`[^`\]]+`)\]\(([\w.-]+)\.md#([\w.-]+)\)")
    return {name: link.sub(fix, t) for name, t in texts.items()}, dropped


def page_name(proc_nb) -> str:
    "A page's file name without suffix, as Quarto names it (nbdev's `output-file`: `00_tokenizer` -> `tokenizer`)."
    return Path(_front_matter(proc_nb).get("output-file", "index.html")).stem


# ------------------------------------------------------------------------------------ offline site

def build_site(root: Path = ROOT, out: str = "_site") -> list[Path]:
    "Build the offline site into `out/` (Markdown staged in `_mkdocs/`); returns the HTML pages, in sidebar order."
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    cache = process_notebooks(root)
    listed = [p for p in site_pages(root) if (cache / p).exists()]
    missing = [p for p in site_pages(root) if not (cache / p).exists()]
    if missing: print("docs: not written yet, left out of the site:", ", ".join(missing))
    from execnb.nbio import read_nb        # nbdev's reader: processed notebooks carry nbdev's own cell fields
    nbs = {Path(p).stem: read_nb(cache / p) for p in listed}
    page_of = {stem: page_name(nb) for stem, nb in nbs.items()}
    settings = _settings(root)
    doc_url = settings["doc_host"].rstrip("/") + "/" + settings["doc_baseurl"].strip("/") + "/"
    stage = root / "_mkdocs"
    shutil.rmtree(stage, ignore_errors=True)
    docs = stage / "docs"
    docs.mkdir(parents=True)
    if (root / "nbs" / "images").is_dir(): shutil.copytree(root / "nbs" / "images", docs / "images")
    shutil.copytree(SITE_CONFIG / "assets", docs / "assets")
    texts = {page_of[stem]: PageWriter(nb, page_of[stem], docs, page_of, doc_url).page() for stem, nb in nbs.items()}
    texts, dropped = unlink_missing_anchors(texts)
    if dropped: print("docs: names with no show_doc entry to link to, shown unlinked:", ", ".join(sorted(dropped)))
    for name, text in texts.items(): (docs / f"{name}.md").write_text(text)
    def item(p: str, label: str | None) -> dict:   # nav labels are plain text
        return {(label or _front_matter(nbs[Path(p).stem]).get("title", Path(p).stem)).replace("`", ""): f"{page_of[Path(p).stem]}.md"}
    nav = []
    for section, entries in site_nav(root):
        items = [item(p, label) for p, label in entries if p in listed]
        if section is None: nav += items
        elif items: nav.append({section: items})
    sys.path.insert(0, str(Path(__file__).resolve().parent))    # for `!!python/name:docs_offline.pandoc_slug`
    shutil.rmtree(root / out, ignore_errors=True)
    build(load_config(str(SITE_CONFIG / "mkdocs.yml"), docs_dir=str(docs), site_dir=str(root / out), nav=nav, strict=True))
    return [root / out / f"{page_of[Path(p).stem]}.html" for p in listed]


def _settings(root: Path) -> dict:
    "settings.ini's [DEFAULT] section."
    import configparser
    cp = configparser.ConfigParser()
    cp.read(root / "settings.ini")
    return dict(cp["DEFAULT"])


# ------------------------------------------------------------------------------------ Quarto site

def build_quarto(root: Path = ROOT) -> Path:
    "Build the published site into `_docs/` with Quarto, as `nbdev_docs` does, but never installing anything."
    if shutil.which("quarto") is None:
        sys.exit("docs: Quarto is not installed (https://quarto.org/docs/get-started/); the offline site needs "
                 "none: python tests/docs_offline.py. Not running nbdev_docs, which would try to install it.")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    import nbdev.doclinks
    from nbdev.quarto import refresh_quarto_yml
    with _cwd(root):
        refresh_quarto_yml()                 # nbs/nbdev.yml from settings.ini
        nbdev.doclinks._build_modidx()       # as nbdev_docs does
    cache = process_notebooks(root)
    qy = yaml.safe_load((cache / "_quarto.yml").read_text())   # as offline: pages not written yet are left out
    sb = qy["website"]["sidebar"]
    sb["contents"] = [p for p in sb["contents"] if (cache / (p if isinstance(p, str) else p["href"])).exists()]
    (cache / "_quarto.yml").write_text(yaml.safe_dump(qy, sort_keys=False))
    subprocess.run(["quarto", "render", "--no-cache"], cwd=cache, check=True)
    dest = root / "_docs"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(str(cache / "_docs"), str(dest))
    return dest


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--readme", action="store_true", help="only regenerate README.md")
    g.add_argument("--quarto", action="store_true", help="build the published site with Quarto into _docs/")
    a = ap.parse_args()
    if a.quarto:
        print("wrote", build_quarto().relative_to(ROOT))
        raise SystemExit
    build_readme()
    print("wrote README.md")
    if not a.readme:
        t = time.perf_counter()
        pages = build_site()
        print(f"wrote {len(pages)} pages into _site/ in {time.perf_counter() - t:.0f} s")
