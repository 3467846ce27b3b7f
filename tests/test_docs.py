"""The docs: README is generated from nbs/index.ipynb and states the two set-up commands; every chapter
renders to a page that carries its title (the offline build of the site; `nbdev_docs` needs Quarto)."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
import docs_offline  # noqa: E402

PAGES = sorted(ROOT.glob("nbs/[0-9][0-9]_*.ipynb")) + [ROOT / "nbs" / "index.ipynb", ROOT / "nbs" / "cli.ipynb"]


def sh_blocks(text):
    return re.findall(r"```sh\n(.*?)\n```", text, re.S)


def test_readme_is_generated_from_index(tmp_path):
    committed = (ROOT / "README.md").read_text()
    fresh = docs_offline.build_readme(ROOT)
    assert committed == fresh, "README.md is stale: run `python tests/docs_offline.py --readme` and commit it"


def test_readme_starts_with_the_two_setup_commands():
    blocks = sh_blocks((ROOT / "README.md").read_text())
    install, test = blocks[0], blocks[1]
    assert 'pip install "torch==2.13.0"' in install and "slm corpus" in install
    assert "nbdev_test" in test and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert "sh_block 1" in ci and "sh_block 2" in ci    # CI runs exactly these README blocks


@pytest.fixture(scope="module")
def site():
    "Build the site in a subprocess: building executes the notebooks' exported cells, which must not re-register this process's hooks and checks."
    import subprocess
    subprocess.run([sys.executable, str(ROOT / "tests" / "docs_offline.py")], cwd=ROOT, check=True, capture_output=True)
    return {p.stem: p for p in (ROOT / "_site").glob("*.html")}


@pytest.mark.parametrize("nb", PAGES, ids=lambda p: p.stem)
def test_every_page_is_built_with_its_title(site, nb):
    title = docs_offline.notebook_title(nb)
    assert nb.stem in site, f"no page for {nb.name}"
    html = site[nb.stem].read_text()
    assert f"<title>{title}</title>" in html
    h1s = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<h1[^>]*>(.*?)</h1>", html, re.S)]
    assert any(h.replace("¶", "").strip() == title.replace("`", "") for h in h1s), f"{nb.stem}: no <h1> {title!r} in {h1s}"
    if nb.stem[:2].isdigit():
        assert "cell-output" in html or "jp-OutputArea" in html, f"{nb.stem}: page has no outputs"
