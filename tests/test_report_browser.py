"""report.html and the sweep status page opened in a real headless Chromium (selenium +
Debian's chromium-driver): every image loads, the expected tables are there, the console stays
clean, and a screenshot is kept (under the test's tmp path, and in $ROBUSTSCALE_ARTIFACTS when
CI sets it). Skipped, with the reason, only where no browser is installed."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import tiny
from zoo_factory import power_law_zoo

pytestmark = pytest.mark.browser

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
CHROMEDRIVER = shutil.which("chromedriver")
# Flags for a machine without internet: no background connections that fail noisily
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1366,900",
]


@pytest.fixture(scope="module")
def browser():
    selenium = pytest.importorskip(
        "selenium", reason="selenium is not installed (pip install -e '.[dev]')"
    )
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip(
            "no chromium + chromedriver on PATH "
            "(apt-get install chromium chromium-driver; .ci/run does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium's driver manager must not try to download anything
    profile = tempfile.mkdtemp(prefix="robustscale-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    assert selenium.__version__
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(driver, page: Path, shot: Path) -> dict:
    driver.get(page.resolve().as_uri())
    state = driver.execute_script(
        "return {ready: document.readyState, title: document.title,"
        " images: Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth]),"
        " tables: Array.from(document.querySelectorAll('table[id]'))"
        "   .map(t => [t.id, t.rows.length]),"
        " links: Array.from(document.querySelectorAll('a[href^=\"#\"]'))"
        "   .map(a => a.getAttribute('href')),"
        " ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),"
        " captions: Array.from(document.querySelectorAll('figure')).map("
        "   f => f.querySelector('figcaption') ? f.querySelector('figcaption').innerText : ''),"
        " width: document.documentElement.scrollWidth}"
    )
    state["console"] = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    driver.save_screenshot(str(shot))
    artifacts = os.environ.get("ROBUSTSCALE_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / shot.name)
    return state


def test_report_in_a_browser(browser, tmp_path):
    from robustscale.analysis import analyze_zoo

    df = power_law_zoo(n=300, with_collapsed=4)
    df.loc[4:30, "loss"] = "standard"
    fits = analyze_zoo(df, tmp_path / "rep", target_acc=40.0, n_boot=100, n_splits=2)
    page = tmp_path / "rep" / "report.html"
    # self-contained: moved away from its figures folder it still shows every figure
    alone = tmp_path / "elsewhere" / "report.html"
    alone.parent.mkdir()
    shutil.copy(page, alone)
    state = _open(browser, alone, tmp_path / "report.png")

    assert state["ready"] == "complete" and state["title"] == "robustscale analysis"
    assert len(state["images"]) == len(fits["figures"]) >= 7
    broken = [alt for alt, complete, width in state["images"] if not complete or width <= 0]
    assert not broken, f"images that did not load: {broken}"
    tables = dict(state["tables"])
    assert (
        tables["laws"] >= 4
        and tables["predictor-scores"] == 3
        and tables["predictor-importance"] >= 6
    )
    assert tables["collapsed"] == 5  # header + the 4 collapsed runs
    assert all(len(c.split()) >= 12 for c in state["captions"]), state[
        "captions"
    ]  # says what and how
    assert set(h.lstrip("#") for h in state["links"]) <= set(
        state["ids"]
    )  # the contents all lead somewhere
    assert {"contents", "fig1a", "fig3a"} <= set(state["ids"])
    assert state["width"] <= 1366, "the page scrolls sideways on a laptop screen"
    assert not state["console"], state["console"]
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_status_page_in_a_browser(browser, tmp_path, capsys):
    from robustscale import train
    from robustscale.cli import main
    from robustscale.sweep.launch import prepare
    from robustscale.sweep.spec import expand

    sweep = expand(
        {
            "name": "browser-sweep",
            "base": tiny(epochs=1, power_watts=40.0).to_dict(),
            "axes": {"seed": [0, 1, 2]},
        }
    )
    folder, ledger = prepare(sweep, tmp_path / "sweep", wal=False)
    ids = [r.run_id for r in sweep.runs]
    done = ledger.claim(ids, max_attempts=3, lease_timeout=300)
    train(sweep.runs[0].recipe, run_dir=folder.run_dir(done.run_id), progress=False)
    ledger.finish(done, ok=True)
    failed = ledger.claim(ids, max_attempts=3, lease_timeout=300)
    ledger.finish(failed, ok=False, error="CUDA out of memory")

    assert main(["status", str(folder.root), "--html", "--refresh", "5"]) == 0
    assert "(1 pending, 1 done, 1 failed)" in capsys.readouterr().out
    page = folder.root / "status.html"
    text = page.read_text()
    assert "<meta http-equiv='refresh' content='5'>" in text
    state = _open(browser, page, tmp_path / "status.png")
    assert state["ready"] == "complete" and state["title"] == "sweep browser-sweep: 1/3 done"
    assert dict(state["tables"]) == {"states": 5, "budget": 3, "runs": 4}
    cells = browser.execute_script(
        "return Array.from(document.querySelectorAll('#runs tbody tr')).map("
        " r => Array.from(r.cells).map(c => c.innerText))"
    )
    assert [row[3] for row in cells] == ["done", "failed", "pending"]
    assert "CUDA out of memory" in cells[1][-1]
    best = float(cells[0][6])
    assert f"{best:.2f}% validation PGD-40" in browser.find_element("id", "best").text
    budget = browser.execute_script(
        "return Array.from(document.querySelectorAll('#budget tbody tr')).map("
        " r => Array.from(r.cells).map(c => c.innerText))"
    )
    spent, forecast = float(budget[0][1]), float(budget[0][2])
    # three runs alike but for the seed, one trained: the forecast is three times what it spent
    # (the page prints three significant digits)
    assert 0 < spent < forecast and abs(forecast / spent - 3) < 0.01
    assert (
        float(budget[1][2]) > float(budget[1][1]) > 0
    )  # energy extrapolated from the one metered run
    assert not state["console"], state["console"]
