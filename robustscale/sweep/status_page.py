"""``robustscale status DIR --html``: a live web page of a sweep, generated from its ledger.

Runs by state, the best validation PGD-40 accuracy so far, and the FLOPs and energy spent
against the forecast. The FLOP forecast is the sweep's own (``forecast_flops``, from each run's
recipe in ``recipes/``); the energy forecast extrapolates the energy per FLOP measured so far,
and says so. The page reloads itself (``<meta http-equiv="refresh">``); ``--watch`` keeps
rewriting it until no run is pending or running.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError, first_line
from robustscale.files import atomic_write_text, check_component, read_json, read_yaml_mapping
from robustscale.sweep.ledger import STATES
from robustscale.sweep.status import sweep_status

log = logging.getLogger(__name__)

STATE_COLOURS = {"pending": "#999", "running": "#1f77b4", "done": "#2ca02c", "failed": "#d62728"}


def forecast_run_flops(folder: Path, run_ids: list[str]) -> dict[str, float | None]:
    """Forecast training FLOPs of each run from its recipe file (None where it cannot be read)."""
    from robustscale.recipe import Recipe
    from robustscale.sweep.spec import SweepRun, forecast_flops

    runs, ids = [], []
    for i, rid in enumerate(run_ids):
        try:
            path = folder / "recipes" / f"{check_component(rid, 'run id')}.yaml"
            runs.append(
                SweepRun(i, Recipe.model_construct(**read_yaml_mapping(path, "sweep recipe")), {})
            )
            ids.append(rid)
        except (RobustscaleError, TypeError) as exc:
            log.warning("warning: no FLOP forecast for %s (%s)", rid, first_line(exc))
    try:
        flops = forecast_flops(runs) if runs else []
    except Exception as exc:  # noqa: BLE001 - the page is still worth showing without a forecast
        log.warning("warning: no FLOP forecast (%s: %s)", type(exc).__name__, first_line(exc))
        flops = None
    out: dict[str, float | None] = {rid: None for rid in run_ids}
    out.update(dict(zip(ids, flops or [None] * len(ids))))
    return out


def _cost(folder: Path, run_id: str) -> dict[str, Any]:
    try:
        path = folder / "runs" / check_component(run_id, "run id") / "cost.json"
        if not path.is_file():
            return {}
        data = read_json(path)
        return data if isinstance(data, dict) else {}
    except RobustscaleError as exc:
        log.warning("warning: ignoring %s", exc)
        return {}


def page_data(
    folder: str | Path, forecast: dict[str, float | None] | None = None
) -> dict[str, Any]:
    """What the page shows, as plain data: rows, counts by state, best PGD-40, spent vs forecast."""
    root = Path(folder)
    rows = sweep_status(root)
    if forecast is None:
        forecast = forecast_run_flops(root, [r["run_id"] for r in rows])
    counts = {s: 0 for s in STATES}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
        cost = _cost(root, r["run_id"])
        r["train_flops"], r["energy_kwh"] = cost.get("train_flops"), cost.get("energy_kwh")
        r["forecast_flops"] = forecast.get(r["run_id"])
    scored = [r for r in rows if r.get("best_val_pgd_acc") is not None]
    best = max(scored, key=lambda r: r["best_val_pgd_acc"], default=None)
    spent_flops = sum(r["train_flops"] or 0.0 for r in rows)
    metered = [r for r in rows if r["energy_kwh"] is not None and r["train_flops"]]
    spent_kwh = sum(r["energy_kwh"] for r in metered) if metered else None
    known = [r["forecast_flops"] for r in rows if r["forecast_flops"] is not None]
    total_flops = sum(known) if len(known) == len(rows) and rows else None
    kwh_per_flop = spent_kwh / sum(r["train_flops"] for r in metered) if metered else None
    return {
        "name": _sweep_name(root),
        "rows": rows,
        "counts": counts,
        "best": best,
        "spent_flops": spent_flops,
        "forecast_flops": total_flops,
        "spent_kwh": spent_kwh,
        "forecast_kwh": kwh_per_flop * total_flops if kwh_per_flop and total_flops else None,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _sweep_name(root: Path) -> str:
    from robustscale.sweep.ledger import Ledger

    return str(Ledger(root / "ledger.sqlite", wal=False).meta().get("name") or root.name)


def _num(v: Any, fmt: str = ".3g") -> str:
    return "-" if v is None else format(v, fmt)


def _progress(row: dict[str, Any]) -> str:
    return f"{row['epoch']}/{row['epochs']}" if row["epochs"] else "-"


def _bar(spent: float | None, total: float | None) -> str:
    if not spent or not total:
        return ""
    pct = min(100.0, 100.0 * spent / total)
    return f'<div class="bar"><div style="width:{pct:.1f}%"></div></div> {pct:.1f}%'


def render_page(data: dict[str, Any], refresh: int = 30) -> str:
    """The HTML of the status page (self-contained, reloading itself every ``refresh`` seconds)."""
    e = html.escape
    counts = "".join(
        f'<tr><td><span class="dot" style="background:{STATE_COLOURS.get(s, "#999")}"></span>'
        f"{e(s)}</td><td>{n}</td></tr>"
        for s, n in data["counts"].items()
    )
    best = data["best"]
    best_text = (
        f"{best['best_val_pgd_acc']:.2f}% validation PGD-40 accuracy: run {e(best['run_id'])} "
        f"({e(best['label'] or 'base')}, {best['shown_state']})"
        if best
        else "no run has been validated yet"
    )
    budget = "".join(
        _tr(label, _num(spent), _num(total), _bar(spent, total))
        for label, spent, total in [
            ("training FLOPs", data["spent_flops"], data["forecast_flops"]),
            ("energy (kWh, PUE included)", data["spent_kwh"], data["forecast_kwh"]),
        ]
    )
    runs = "".join(_run_row(r) for r in data["rows"])
    done, name = data["counts"].get("done", 0), e(data["name"])
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{int(refresh)}'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>sweep {name}: {done}/{len(data['rows'])} done</title>"
        f"<style>{STYLE}</style></head><body><h1>Sweep {name}</h1>"
        f"<p>Updated {e(data['updated'])} from the ledger; this page reloads every "
        f"{int(refresh)} s (regenerate it with <code>robustscale status DIR --html</code>, or "
        "keep it current with <code>--watch</code>).</p>"
        f"<h2>Runs by state</h2>{_table('states', ['state', 'runs'], counts)}"
        f"<h2>Best PGD-40 so far</h2><p id='best'>{best_text}</p>"
        f"<h2>Spent vs forecast</h2>{_table('budget', ['', 'spent', 'forecast', 'share'], budget)}"
        "<p>FLOP forecast: the sweep's per-run forecast from each recipe. Energy forecast: the "
        "energy per training FLOP of the runs metered so far × the FLOP forecast (an "
        "extrapolation).</p>"
        f"<h2>Runs</h2><div class='wide'>{_table('runs', RUN_COLUMNS, runs)}</div></body></html>"
    )


RUN_COLUMNS = [
    "#",
    "run id",
    "varying",
    "state",
    "tries",
    "epoch",
    "best PGD-40 (%)",
    "FLOPs spent",
    "FLOPs forecast",
    "kWh",
    "where / error",
]
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:auto;padding:0 16px}"
    "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px;"
    "font-size:13px}th{background:#f3f3f3}.dot{display:inline-block;width:10px;height:10px;"
    "border-radius:5px;margin-right:6px}.bar{display:inline-block;width:160px;height:10px;"
    "background:#eee;vertical-align:middle}.bar div{height:10px;background:#1f77b4}"
    "tr.failed td{background:#fdecea}.wide{overflow-x:auto}"
)


def _tr(*cells: str, cls: str = "") -> str:
    attr = f" class='{cls}'" if cls else ""
    return f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _table(ident: str, header: list[str], body: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table id='{ident}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_row(r: dict[str, Any]) -> str:
    e = html.escape
    note = (r["last_error"] if r["state"] == "failed" else r["where"]) or ""
    return _tr(
        str(r["idx"] + 1),
        e(r["run_id"]),
        e(r["label"]),
        e(r["shown_state"]),
        str(r["attempts"]),
        _progress(r),
        _num(r["best_val_pgd_acc"], ".2f"),
        _num(r["train_flops"]),
        _num(r["forecast_flops"]),
        _num(r["energy_kwh"]),
        e(note),
        cls=e(r["state"]),
    )


def write_status_page(
    folder: str | Path,
    path: str | Path | None = None,
    *,
    refresh: int = 30,
    forecast: dict[str, float | None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the page (default ``DIR/status.html``) atomically; return its path and its data."""
    data = page_data(folder, forecast)
    out = Path(path) if path is not None else Path(folder) / "status.html"
    atomic_write_text(out, render_page(data, refresh))
    return out, data
