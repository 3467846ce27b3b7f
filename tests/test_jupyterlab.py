"""JupyterLab opens a chapter with the project's kernel selected (no "Select Kernel" dialog) and does not
mark it modified: checked in a headless JupyterLab on 127.0.0.1 driven by headless Chromium, on a scratch
copy of the notebooks that `tests/nb_metadata.py` gave the project's kernel metadata (and nbdev cleaned)."""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
import nb_metadata  # noqa: E402

def test_committed_notebooks_carry_the_project_kernel():
    assert nb_metadata.main(["--check"]) == 0


def test_readme_setup_installs_the_project_kernel():
    setup = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)[0]
    assert f"ipykernel install --sys-prefix --name {nb_metadata.KERNEL} --display-name {nb_metadata.KERNEL}" in setup


def test_metadata_survives_nbdev_clean(tmp_path):
    for p in (ROOT / "nbs").glob("0[0-1]_*.ipynb"): shutil.copy(p, tmp_path)
    nb_metadata.main([str(tmp_path)])
    first = {p.name: p.read_text() for p in tmp_path.glob("*.ipynb")}
    assert nb_metadata.main(["--check", str(tmp_path)]) == 0
    nb_metadata.main([str(tmp_path)])                       # idempotent, and already in nbdev_clean's form
    assert first == {p.name: p.read_text() for p in tmp_path.glob("*.ipynb")}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A headless JupyterLab on 127.0.0.1 over a scratch copy of nbs/ with the metadata applied; yields (url, folder)."
    tmp = tmp_path_factory.mktemp("lab")
    nbs = tmp / "nbs"
    shutil.copytree(ROOT / "nbs", nbs, ignore=shutil.ignore_patterns("_*", ".*"))
    nb_metadata.main([str(nbs)])
    from ipykernel.kernelspec import install
    install(kernel_name=nb_metadata.KERNEL, display_name=nb_metadata.KERNEL, prefix=str(tmp / "prefix"))
    env = dict(os.environ, JUPYTER_PATH=str(tmp / "prefix" / "share" / "jupyter"), JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
    port = _free_port()
    log = (tmp / "lab.log").open("w")
    srv = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
                            f"--port={port}", "--IdentityProvider.token=", "--ServerApp.password=",
                            f"--ServerApp.root_dir={nbs}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}"],
                           env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try: urllib.request.urlopen(url + "api/status", timeout=2); break
            except OSError: time.sleep(0.5)
        else: pytest.fail(f"JupyterLab did not start: {(tmp / 'lab.log').read_text()[-2000:]}")
        yield url, nbs
    finally:
        srv.terminate()
        srv.wait(20)
        log.close()


@pytest.mark.expensive   # a JupyterLab server and a browser
@pytest.mark.parametrize("name", ["00_tokenizer.ipynb", "index.ipynb"])
def test_jupyterlab_opens_the_notebook_ready(lab, browser, name):
    from selenium.webdriver.common.by import By
    url, nbs = lab
    before = (nbs / name).read_text()
    browser.get(f"{url}lab/tree/{name}?reset")
    t0, dialog, kernel = time.time(), False, ""
    while time.time() - t0 < 90:
        dialog = bool(browser.find_elements(By.CSS_SELECTOR, ".jp-Dialog"))
        kernel = browser.execute_script("const e = document.querySelector('.jp-Toolbar-kernelName'); return e ? e.textContent : ''")
        idle = browser.execute_script("return [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
                                      ".some(e => /\\|\\s*Idle/.test(e.textContent))")   # the status bar's "slm | Idle"
        if dialog or idle: break
        time.sleep(0.5)
    time.sleep(3)                                    # JupyterLab writes kernel metadata once the kernel is up
    dialog = dialog or bool(browser.find_elements(By.CSS_SELECTOR, ".jp-Dialog"))
    dirty = browser.execute_script("return [...document.querySelectorAll('.lm-TabBar-tab.jp-mod-current')]"
                                   ".some(t => t.classList.contains('jp-mod-dirty'))")
    assert not dialog, f"{name}: JupyterLab asked for a kernel"
    assert kernel.strip() == nb_metadata.KERNEL, f"{name}: kernel {kernel!r}"
    assert not dirty, f"{name}: marked modified on opening"
    assert (nbs / name).read_text() == before
    browser.get("about:blank")
