"""The docs: README is generated from nbs/index.ipynb and states the two set-up commands; the offline
site (tests/docs_offline.py) has every page of the sidebar list with its title, and reads well in a
real browser (headless Chromium): sidebar, typeset math, no prompts or test plumbing, links and
images that resolve, search, no console errors. The publishing workflows are valid and run nbdev's
test and Quarto build."""
import functools
import html as html_mod
import json
import http.server
import re
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
import docs_offline  # noqa: E402

NOTEBOOKS = sorted(p for p in (ROOT / "nbs").glob("*.ipynb"))
LISTED = [p for p in docs_offline.site_pages(ROOT) if (ROOT / "nbs" / p).exists()]
SCREENSHOTS = ROOT / "_site_screenshots"
# Screenshots saved by the browser test: page -> a JS expression for the element to scroll to (None: the top).
SHOTS = {"index": None,
         "00_tokenizer": "document.getElementById('the-tokenizer-interface')",   # show_doc entries, folded source
         "09_memory_probe": "document.querySelector('div.arithmatex')",          # display math
         "08_interpretability": "[...document.querySelectorAll('.md-content p')]"  # the widget's static picture
                                ".find(p => p.textContent.startsWith('A static picture')).closest('div').previousElementSibling"}


def sh_blocks(text):
    return re.findall(r"```sh\n(.*?)\n```", text, re.S)


# ------------------------------------------------------------------------------------------- README

def test_readme_is_generated_from_index(tmp_path):
    committed = (ROOT / "README.md").read_text()
    fresh = docs_offline.build_readme(ROOT)
    assert committed == fresh, "README.md is stale: run `python tests/docs_offline.py --readme` and commit it"


def test_readme_starts_with_the_two_setup_commands():
    blocks = sh_blocks((ROOT / "README.md").read_text())
    install, test, expensive = blocks[0], blocks[1], blocks[2]
    assert 'pip install "torch==2.13.0"' in install and "slm corpus" in install
    assert test.startswith(".venv/bin/pytest"), test          # one run: tests/ and every notebook once (conftest.py)
    assert "nbdev_test" not in test, "nbdev_test would execute every notebook a second time"
    assert test.endswith('-m "not expensive"') and expensive == test.replace('-m "not expensive"', "-m expensive")
    ci = (ROOT / ".ci" / "run").read_text()
    assert all(f"sh_block {n}" in ci for n in (1, 2, 3))   # CI runs exactly these README blocks: (b), then the group


# -------------------------------------------------------------------------------------- page list

def test_the_sidebar_shows_the_two_parts_with_chapter_numbers():
    nav = dict((section, entries) for section, entries in docs_offline.site_nav(ROOT) if section)
    part1, part2 = (next(e for s, e in nav.items() if s.startswith(f"Part {n}")) for n in ("I ", "II "))
    for entries, pattern in ((part1, r"\d\d_"), (part2, r"\d\d[a-z]_")):
        for nb, label in entries:
            assert re.match(pattern, nb), f"{nb} is listed in the wrong part"
            assert label and label.startswith(nb.split("_")[0] + " · "), f"{nb}: label {label!r} lacks its number"
    assert [nb for nb, _ in part1] == sorted(p.name for p in NOTEBOOKS if re.match(r"\d\d_", p.name))
    assert [nb for nb, _ in part2] == sorted(p.name for p in NOTEBOOKS if re.match(r"\d\d[a-z]_", p.name))


def test_every_notebook_is_in_the_sidebar_list():
    listed = set(docs_offline.site_pages(ROOT))
    assert docs_offline.site_pages(ROOT)[0] == "index.ipynb", "the home page comes first"
    missing = [p.name for p in NOTEBOOKS if p.name not in listed]
    assert not missing, f"add these to website.sidebar.contents in _quarto.yml: {missing}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_holds_only_the_title_and_description(nb):
    "nbdev turns the first cell into the page's front matter and drops it, so anything else in it never reaches the site."
    first = json.loads(nb.read_text())["cells"][0]
    lines = [l for l in "".join(first["source"]).splitlines() if l.strip()]
    extra = [l for l in lines if not l.startswith(("# ", "> "))]
    assert first["cell_type"] == "markdown" and lines[0].startswith("# "), f"{nb.name}: the first cell is not the title"
    assert not extra, f"{nb.name}: move what follows the title and description into a cell of its own: {extra[0][:60]!r}"


@pytest.mark.parametrize("stem", sorted(docs_offline.chapter_table(ROOT)))
def test_chapter_titles_match_the_chapter_table(stem):
    table = docs_offline.chapter_table(ROOT)[stem]
    title = docs_offline.notebook_title(ROOT / "nbs" / f"{stem}.ipynb")
    assert title == table, f"{stem}: notebook title {title!r}, chapter table {table!r}"


def test_symbol_lookup_finds_the_package():
    "`[project.entry-points.nbdev]` lets nbdev link backticked names to their show_doc entries."
    from nbdev.doclinks import NbdevLookup
    url = NbdevLookup()["GPT"][0]
    assert url.endswith("model.html#gpt"), url


# ----------------------------------------------------------------------------------- offline site

@pytest.fixture(scope="module")
def site():
    """Build the offline site once for this module; {notebook stem: HTML page}. The build runs in a subprocess: it
    executes the notebooks' exported cells, which must not re-register this test process's hooks and checks."""
    import json, subprocess
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT / 'tests')!r}); import docs_offline; "
            f"print(json.dumps([str(p) for p in docs_offline.build_site(docs_offline.ROOT)]))")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    build_s = time.perf_counter() - t
    assert build_s < 120, f"the offline build took {build_s:.0f} s (limit 120 s)"
    pages = [Path(p) for p in json.loads(out.strip().splitlines()[-1])]
    return {Path(nb).stem: page for nb, page in zip(LISTED, pages)}


@pytest.mark.expensive   # the docs site build and the browser
@pytest.mark.parametrize("nb", LISTED, ids=lambda p: Path(p).stem)
def test_every_page_is_built_with_its_title(site, nb):
    stem = Path(nb).stem
    title = docs_offline.notebook_title(ROOT / "nbs" / nb).replace("`", "")
    html = site[stem].read_text()
    assert re.search(rf"<title>{re.escape(title)}( - slm)?</title>", html), f"{stem}: no <title> {title!r}"
    h1s = [html_mod.unescape(re.sub(r"<[^>]+>", "", h)).replace("¶", "").strip() for h in re.findall(r"<h1[^>]*>(.*?)</h1>", html, re.S)]
    assert title in h1s, f"{stem}: no <h1> {title!r} in {h1s}"
    code = "\n".join(re.findall(r"<pre[^>]*>(.*?)</pre>", html, re.S))
    assert "NBVAL_" not in html, f"{stem}: nbval markers on the page"
    assert not re.search(r"^(<[^>]+>)*#\|", code, re.M), f"{stem}: #| directives in the page's code"
    assert not re.search(r"/tmp/[\w.-]*[-_][a-z0-9_]{8}\b", html), f"{stem}: a temporary folder's path on the page"
    if stem[:2].isdigit(): assert "cell-output" in html, f"{stem}: page has no outputs"
    exported = (ROOT / "_proc" / nb).read_text().count("#| code-fold")
    assert html.count('<details class="source"') == exported, f"{stem}: {exported} exported cells, not all folded"


@pytest.mark.expensive   # the docs site build and the browser
def test_widget_output_is_a_static_picture(site):
    html = site["08_interpretability"].read_text()
    i = html.index("A static picture of the interactive widget")
    assert "<img" in html[max(0, i - 2000):i], "no picture before the widget's note"


# ---------------------------------------------------------------------------------------- browser

@pytest.fixture(scope="module")
def served(site):
    "The offline site served over HTTP on 127.0.0.1, as a static host would (GitHub Pages)."
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ROOT / "_site"))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()


_PAGE_STATE = r"""
const main = document.querySelector('.md-content');
const clone = main.cloneNode(true);
clone.querySelectorAll('pre, code, math, script').forEach(e => e.remove());
return {
  sidebar: [...document.querySelectorAll('.md-nav--primary .md-nav__item')].filter(li => !li.closest('.md-nav--secondary'))
             .map(li => li.querySelector(':scope > .md-nav__link').textContent.trim()),
  code: [...document.querySelectorAll('.md-content pre')].map(p => p.textContent).join('\n'),
  toc: document.querySelectorAll('.md-nav--secondary a.md-nav__link').length,
  prose: clone.innerText,
  text: main.innerText,
  math: document.querySelectorAll('.md-content math').length,
  ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  images: [...document.querySelectorAll('.md-content img')].map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0})),
  footer: [...document.querySelectorAll('.md-footer__link')].map(a => a.getAttribute('rel') || a.className),
  folded: [...document.querySelectorAll('details.source')].map(d => d.open),
};
"""


@pytest.fixture(scope="module")
def rendered(site, served, browser):
    "Every listed page opened in Chromium: {stem: DOM facts}, with the console's messages."
    from selenium.webdriver.support.ui import WebDriverWait
    out = {}
    for nb in LISTED:
        stem = Path(nb).stem
        browser.get(served + site[stem].name)
        WebDriverWait(browser, 30).until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && !!document.querySelector('.md-footer-meta')"))
        state = browser.execute_script(_PAGE_STATE)
        state["console"] = [m for m in browser.get_log("browser") if m["level"] in ("SEVERE", "ERROR")]
        state["url"] = browser.current_url
        out[stem] = state
        if stem in SHOTS:
            if SHOTS[stem]:
                browser.execute_script(f"({SHOTS[stem]}).scrollIntoView({{block: 'start'}}); window.scrollBy(0, -70);")
                time.sleep(0.3)
            SCREENSHOTS.mkdir(exist_ok=True)
            browser.save_screenshot(str(SCREENSHOTS / f"{stem}.png"))
    return out


def _titles():
    "The sidebar as a reader sees it: each part's title, then its pages (the entry's label, else the page's title)."
    out = []
    for section, entries in docs_offline.site_nav(ROOT):
        shown = [label or docs_offline.notebook_title(ROOT / "nbs" / nb) for nb, label in entries if nb in LISTED]
        out += ([section] if section and shown else []) + [t.replace("`", "") for t in shown]
    return out


@pytest.mark.expensive   # the docs site build and the browser
@pytest.mark.parametrize("nb", LISTED, ids=lambda p: Path(p).stem)
def test_page_reads_well_in_a_browser(rendered, nb):
    stem = Path(nb).stem
    s = rendered[stem]
    assert s["sidebar"] == _titles(), f"{stem}: sidebar {s['sidebar']}"
    assert not s["console"], f"{stem}: console errors {s['console']}"
    assert "In [" not in s["text"] and "Out[" not in s["text"], f"{stem}: notebook prompts on the page"
    raw_math = re.findall(r"\$[^$\s][^$]*?\$|\\\(|\\\[", s["prose"])
    assert not raw_math, f"{stem}: untypeset math {raw_math[:3]}"
    broken = [i["src"] for i in s["images"] if not i["ok"]]
    assert not broken, f"{stem}: images that do not load {broken}"
    if stem != "index":
        assert s["toc"] > 0, f"{stem}: no table of contents"
        assert len(s["footer"]) >= 1, f"{stem}: no previous/next links"
    assert not any(s["folded"]), f"{stem}: exported source is not folded"
    assert not re.search(r"^#\||NBVAL_", s["code"], re.M), f"{stem}: directives or nbval markers in the code"


@pytest.mark.expensive   # the docs site build and the browser
def test_math_is_typeset(rendered):
    assert rendered["03_model"]["math"] >= 2 and rendered["09_memory_probe"]["math"] >= 1


@pytest.mark.expensive   # the docs site build and the browser
def test_every_internal_link_resolves(rendered, served):
    ids = {urlsplit(s["url"]).path: set(s["ids"]) for s in rendered.values()}
    bad = []
    for stem, s in rendered.items():
        for href in s["links"]:
            if not href.startswith(served): continue
            u = urlsplit(href)
            path = unquote(u.path)
            target = ROOT / "_site" / path.lstrip("/")
            if not target.exists(): bad.append(f"{stem}: {href} (no such file)"); continue
            if u.fragment and path in ids and unquote(u.fragment) not in ids[path]:
                bad.append(f"{stem}: {href} (no such anchor)")
    assert not bad, "\n".join(bad[:20])


@pytest.mark.expensive   # the docs site build and the browser
def test_search_finds_words_offline(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(served + "index.html")
    box = browser.find_element(By.CSS_SELECTOR, "input.md-search__input")
    box.click()
    box.send_keys("perplexity")
    WebDriverWait(browser, 15).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".md-search-result__item"))
    hits = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item")]
    assert hits and any("Evaluation" in h or "perplexity" in h.lower() for h in hits), hits[:5]


# -------------------------------------------------------------------------------------- workflows

@pytest.mark.parametrize("name", ["test.yaml", "deploy.yaml"])
def test_workflows_are_valid(name):
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    assert wf.get("jobs") and (wf.get("on") or wf.get(True)), f"{name}: no jobs or triggers"
    text = (ROOT / ".github" / "workflows" / name).read_text()
    if name == "test.yaml":                                     # nbdev's own check, and .ci/run (README commands a and b)
        runs = [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]
        assert any("nbdev_test" in r for r in runs) and any(".ci/run" in r for r in runs), runs
    if name == "deploy.yaml": assert "quarto" in text and "docs_offline.py --quarto" in text
