"""Figures drawn in a forked process beside the fits (robustscale.analysis.drawing): the same
files as drawing them all in this process, errors raised here, a dead child's figures drawn
here."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from zoo_factory import joint_zoo, power_law_zoo

from robustscale.analysis import analyze_zoo
from robustscale.analysis.drawing import FigureDrawer, fork_available

needs_fork = pytest.mark.skipif(not fork_available(), reason="needs fork and two cores")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "figures").iterdir())}


@needs_fork
@pytest.mark.parametrize(
    "make, helps",
    [(power_law_zoo, True), (joint_zoo, False)],
    ids=["laws, both processes draw", "joint law, the child draws all"],
)
def test_forked_figures_are_the_files_drawn_in_this_process(tmp_path, monkeypatch, make, helps):
    import matplotlib

    import robustscale.analysis.drawing as drawing

    if not helps:  # as in a process without matplotlib: later jobs go through the queue
        monkeypatch.setattr(drawing, "FIGURES_MODULE", "robustscale.not_loaded")
    # SVGs and PDFs carry the date, SVGs random clip ids, unless these are fixed
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    monkeypatch.setitem(matplotlib.rcParams, "svg.hashsalt", "test")
    df, joint = make(n=300), make is joint_zoo
    fits = {
        mode: analyze_zoo(
            df,
            tmp_path / str(mode),
            n_boot=100,
            n_splits=2,
            joint=joint,
            parallel=mode,
            vector=("svg", "pdf"),
        )
        for mode in (True, False)
    }
    for f in fits.values():
        stages = {"fits", "figures", "figures_after_fits"} | ({"joint"} if joint else set())
        assert f.pop("timings").keys() == stages
        f.pop("seconds")
    assert fits[True] == fits[False]
    assert list(fits[True]["figures"]) == list(fits[False]["figures"])  # the report's order
    forked, here = _files(tmp_path / "True"), _files(tmp_path / "False")
    assert len(forked) == 3 * len(fits[True]["figures"]) and forked == here
    if joint:
        assert {"4a", "4b", "4c"} <= set(fits[True]["figures"])
    saved = json.loads((tmp_path / "True" / "fits.json").read_text())
    assert saved["figures"] == fits[True]["figures"]


def _fail(name: str) -> Path:
    raise ValueError(f"cannot draw {name}")


def _path(name: str) -> Path:
    return Path(name)


def _die_unless(pid: int, name: str) -> Path:
    if os.getpid() != pid:  # in the drawing process: it dies without answering
        os._exit(3)
    return Path(name)


@needs_fork
def test_an_error_drawing_in_the_child_is_raised_here():
    with FigureDrawer([("1a", f"{__name__}:_fail", ("1a",))], parallel=True) as drawer:
        with pytest.raises(ValueError, match="cannot draw 1a"):
            drawer.finish()
    assert drawer.proc is None


@needs_fork
def test_figures_a_dead_child_did_not_draw_are_drawn_here(caplog):
    first = [(n, f"{__name__}:_die_unless", (os.getpid(), n)) for n in ("1a", "2")]
    with caplog.at_level(logging.WARNING, logger="robustscale.analysis.drawing"):
        with FigureDrawer(first, parallel=True) as drawer:
            drawer.helps = False  # leave every job to the child
            drawer.submit([("1b", f"{__name__}:_path", ("1b",))])
            paths = drawer.finish()
    assert paths == {"1a": Path("1a"), "1b": Path("1b"), "2": Path("2")}  # the report's order
    assert "exit code 3" in caplog.text


def _die_leaving_the_pipe_open(pid: int, name: str) -> Path:
    if os.getpid() != pid:  # in the drawing process: a grandchild keeps its pipe ends open
        if os.fork() == 0:
            import time

            time.sleep(60)
            os._exit(0)
        os._exit(4)
    return Path(name)


@needs_fork
def test_a_dead_child_whose_pipe_outlives_it_does_not_leave_this_process_waiting(caplog):
    import time

    first = [("2", f"{__name__}:_die_leaving_the_pipe_open", (os.getpid(), "2"))]
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="robustscale.analysis.drawing"):
        with FigureDrawer(first, parallel=True) as drawer:
            drawer.helps = False
            paths = drawer.finish()
    assert paths == {"2": Path("2")} and "exit code 4" in caplog.text
    assert time.monotonic() - start < 30  # not the grandchild's 60 s


def test_by_default_a_process_with_torch_draws_its_figures_itself():
    import torch  # noqa: F401  (loaded, as in a notebook that also trains)

    with FigureDrawer([("2", f"{__name__}:_path", ("2",))]) as drawer:
        assert drawer.proc is None and drawer.finish() == {"2": Path("2")}


@needs_fork
@pytest.mark.parametrize("helps", [True, False])
def test_every_job_is_drawn_once_whoever_draws_it(helps):
    names = ["4a", "3c", "3b", "3a", "2", "1c", "1b", "1a"]
    first = [(n, f"{__name__}:_path", (n,)) for n in names[:5]]
    drawer = FigureDrawer(first, parallel=True)
    drawer.helps = helps
    drawer.submit([(n, f"{__name__}:_path", (n,)) for n in names[5:]])
    paths = drawer.finish()
    assert list(paths) == sorted(names) and drawer.proc is None


def test_without_fork_the_figures_are_drawn_in_this_process():
    drawer = FigureDrawer([("2", f"{__name__}:_path", ("2",))], parallel=False)
    drawer.submit([("1a", f"{__name__}:_path", ("1a",))])
    assert drawer.proc is None and list(drawer.finish()) == ["1a", "2"]


@needs_fork
def test_a_fit_that_fails_stops_the_drawing_process(tmp_path, monkeypatch):
    import multiprocessing

    import robustscale.analysis.analyze as analyze

    def broken(*args, **kwargs):
        raise KeyError("predictor")

    monkeypatch.setattr(analyze, "with_fitted_predictor", broken)
    with pytest.raises(KeyError, match="predictor"):
        analyze_zoo(power_law_zoo(n=60), tmp_path / "rep", n_boot=20, joint=False, parallel=True)
    assert multiprocessing.active_children() == []
