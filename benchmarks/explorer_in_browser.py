"""Notebook 03's mask explorer in a real JupyterLab: start `jupyter lab` headless on a scratch copy of the notebook,
open it in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium), run every cell, move the
`n` slider one step, and check that the explorer's figure changed (screenshots before and after).

    python benchmarks/explorer_in_browser.py --out notebooks/figures     # writes explorer_before/after.png

Needs jupyterlab, ipywidgets, selenium, chromium and chromedriver; `tests/test_explorer_browser.py` runs it and skips,
naming what is missing, where any of them is absent (CI has no browser). The notebook in the checkout is never
touched: JupyterLab serves a copy in a temporary directory beside a link to the package.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = "03_shifted_groups.ipynb"


def missing() -> list[str]:
    """What this check needs and this machine lacks (empty when it can run)."""
    out = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    for module in ("selenium", "jupyterlab", "ipywidgets", "PIL"):
        try:
            __import__(module)
        except ImportError:
            out.append(module)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, port: int, token: str) -> subprocess.Popen:
    """`jupyter lab` serving `root`, no browser, the app exposed to page scripts (to run all cells by command)."""
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
           "--allow-root"]
    settings = root / ".jupyter" / "lab" / "user-settings" / "@jupyterlab"
    # every cell in the DOM (JupyterLab 4 otherwise detaches cells out of view), and no news pop-up over the page
    for extension, name, value in (("notebook-extension", "tracker", '{"windowingMode": "none"}'),
                                   ("apputils-extension", "notification", '{"fetchNews": "false"}')):
        (settings / extension).mkdir(parents=True, exist_ok=True)
        (settings / extension / f"{name}.jupyterlab-settings").write_text(value)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise RuntimeError("jupyter lab did not answer within 120 s")


def _wait(driver, condition, seconds: float, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # a redraw replaces the image element: a stale reference means "not yet", not failure
        return WebDriverWait(driver, seconds, poll_frequency=0.5,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except Exception as error:
        raise RuntimeError(f"timed out after {seconds:.0f} s waiting for {what}") from error


def _figure(driver):
    """The explorer's figure: the last image inside the widget's Output area, once it has loaded."""
    images = driver.find_elements("css selector", ".widget-output img")
    return images[-1] if images and images[-1].get_attribute("complete") == "true" else None


def run_check(out_dir: Path, timeout: float = 300) -> dict:
    """Run the explorer in JupyterLab + Chromium, move the n slider one step, and return the slider's values and the
    fraction of the figure's pixels that changed; screenshots of the whole explorer before and after in out_dir."""
    from selenium import webdriver
    from selenium.webdriver.common.keys import Keys

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "notebooks").mkdir()
        shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / "notebooks" / NOTEBOOK)
        (root / "minilongllora").symlink_to(ROOT / "minilongllora")  # the first cell imports the package from here
        port, token = _free_port(), "explorer-check"
        lab = start_lab(root, port, token)
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1500,1100"):
            options.add_argument(arg)
        options.binary_location = shutil.which("chromium")
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
        try:
            driver.get(f"http://127.0.0.1:{port}/lab/tree/notebooks/{NOTEBOOK}?token={token}")
            _wait(driver, lambda d: d.execute_script(
                "const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
                "return !!(w && w.sessionContext && w.sessionContext.session"
                " && w.sessionContext.session.kernel && w.sessionContext.isReady)"), timeout, "the kernel")
            driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            before = _wait(driver, _figure, timeout, "the explorer's figure")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", before)
            time.sleep(1)
            box = driver.find_element("css selector", ".widget-vbox")  # the whole explorer: controls and figure
            shot_before, box_before = before.screenshot_as_png, box.screenshot_as_png
            src_before = before.get_attribute("src")
            slider = driver.find_elements("css selector", ".widget-slider")[0]  # the first slider is n
            value_before = slider.find_element("css selector", ".widget-readout").text
            handle = slider.find_element("css selector", ".noUi-handle")
            handle.click()
            handle.send_keys(Keys.ARROW_LEFT)  # one step: n − 8
            _wait(driver, lambda d: (img := _figure(d)) is not None and img.get_attribute("src") != src_before,
                  timeout, "the redrawn figure")
            time.sleep(1)
            after = _figure(driver)
            shot_after, box_after = after.screenshot_as_png, box.screenshot_as_png
            value_after = slider.find_element("css selector", ".widget-readout").text
        except Exception:
            driver.save_screenshot(str(out_dir / "failure_page.png"))  # what the browser showed, for the report
            (out_dir / "failure_page.html").write_text(driver.page_source)
            raise
        finally:
            driver.quit()
            lab.terminate()
            lab.wait(timeout=30)
    (out_dir / "explorer_before.png").write_bytes(box_before)
    (out_dir / "explorer_after.png").write_bytes(box_after)
    changed = changed_fraction(shot_before, shot_after)
    return {"n_before": value_before, "n_after": value_after, "pixels_changed": changed}


def changed_fraction(png_a: bytes, png_b: bytes) -> float:
    """The fraction of pixels that differ between two screenshots (1.0 if their sizes differ)."""
    import numpy as np
    from PIL import Image

    a, b = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in (png_a, png_b))
    return 1.0 if a.shape != b.shape else float((a != b).any(axis=-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("explorer_screenshots"), help="where the screenshots go")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for each step")
    args = parser.parse_args()
    if missing():
        sys.exit(f"cannot run: missing {', '.join(missing())}")
    result = run_check(args.out, args.timeout)
    print(f"n slider {result['n_before']} -> {result['n_after']}; {100 * result['pixels_changed']:.1f}% of the "
          f"figure's pixels changed; screenshots in {args.out}")
    if result["pixels_changed"] == 0:
        sys.exit("the figure did not change")


if __name__ == "__main__":
    main()
