"""The summary of one ``benchmarks/device_check.py`` session: a Markdown table of its steps and
figures, printed last and appended to ``DIR/device-check.md``."""

from __future__ import annotations

# ---- the summary -----------------------------------------------------------------------------


def _f(v: object, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def summary_table(session: dict) -> str:
    """The session as Markdown: step states, then the figures of each step."""
    steps = session["steps"]
    lines = [
        f"## device check, session {session['index']} ({session['started']}, "
        f"device {session['device']}"
        f"{', quick' if session['quick'] else ''})",
        "",
    ]
    if session.get("note"):
        lines += [f"Note: {session['note']}", ""]
    lines += ["| step | state | seconds | records |", "|---|---|---|---|"]
    for name, e in steps.items():
        lines.append(
            f"| {name} | {e['state']} | {_f(e.get('seconds'))} | {len(e.get('records', []))} |"
        )
    recs = {name: e.get("records", []) for name, e in steps.items()}
    for env in recs.get("environment", []):
        what = env.get("gpu") or env.get("cpu")
        lines += [
            "",
            f"Environment: {what}; driver {env.get('driver', '-')}; CUDA {env.get('cuda_build')}; "
            f"torch {env['torch']}; memory {env.get('memory_gib')} GiB; peak bf16 "
            f"{_f(env.get('peak_tflops_bf16'))} TFLOP/s ({env.get('peak_basis')}); "
            f"energy meter {env.get('energy_meter')}",
        ]
    for t in recs.get("cuda_tests", []):
        lines += [
            "",
            f"CUDA tests: {t['passed']} passed, {t['failed'] + t['error']} failed, "
            f"{t['skipped']} skipped (exit {t['exit_code']})",
        ]
        lines += [
            f"- {c['test']}: {c['outcome']}" + (f" ({c['message']})" if c["message"] else "")
            for c in t["tests"]
            if c["outcome"] != "passed"
        ]
    rows = recs.get("train_step", [])
    if rows:
        base = next((r for r in rows if r.get("impl") == "baseline" and "step_s" in r), None)
        lines += [
            "",
            "| variant | model | impl | ex/s | MFU | peak GiB | x baseline "
            "| fits | 400 epochs, h |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            ratio = (
                base["step_s"] * r["batch_size"] / base["batch_size"] / r["step_s"]
                if base and "step_s" in r and r.get("model") == base["model"]
                else None
            )
            mem = r.get("peak_mem_bytes")
            fits = (
                "no"
                if r.get("fits") is False
                else ("error: " + r["error"] if r.get("error") else "yes")
            )
            lines.append(
                f"| {r['variant']} | {r.get('model')} | {r.get('impl')} | "
                f"{_f(r.get('examples_per_s'))} | "
                f"{_f(100 * r['mfu'] if r.get('mfu') else None)}{'%' if r.get('mfu') else ''} | "
                f"{_f(mem / 2**30 if mem else None, '{:.2f}')} | "
                f"{_f(ratio, '{:.2f}')} | {fits} | "
                f"{_f(r['projected_wall_s'] / 3600 if r.get('projected_wall_s') else None)} |"
            )
    for r in recs.get("train_eval", []):
        if r["part"] == "train":
            lines += [
                "",
                f"Training: {r['model']}, {r['examples']} random CIFAR-format images, 2 epochs "
                f"bf16: exit {r['exit_code']} in {r['seconds']} s; energy {r.get('energy_kwh')} "
                f"kWh ({r.get('energy_source')}); status {r.get('status')}",
            ]
        elif r["part"] == "eval-cli":
            lines.append(
                f"`{r['command']}`: exit {r['exit_code']} in {r['seconds']} s; clean "
                f"{_f(r.get('clean_acc'), '{:.2f}')}%, AutoAttack "
                f"{_f(r.get('robust_acc'), '{:.2f}')}%"
            )
        else:
            verdicts = (
                "identical" if r["verdicts_identical"] else f"DIFFER on {r['verdicts_differing']:d}"
            )
            lines.append(
                f"AutoAttack, n={r['n']}: plain pyautoattack {r['plain_seconds']} s, robustscale "
                f"{r['robustscale_seconds']} s "
                f"(x{r['speedup_vs_pyautoattack']:.2f}); verdicts {verdicts}"
            )
            for opt in ("channels_last", "compile"):
                if f"{opt}_seconds" in r:
                    lines.append(
                        f"- adapter with {opt}: {r[f'{opt}_seconds']} s "
                        f"(x{r[f'{opt}_speedup_vs_pyautoattack']:.2f}); verdicts differing "
                        f"{r[f'{opt}_verdicts_differing']}"
                    )
    return "\n".join(lines) + "\n"
