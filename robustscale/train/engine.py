"""The training engine: ``train(recipe)`` runs one recipe end to end into a run directory.

One epoch is: for each batch, the recipe's loss (attack included), backward, SGD step, EMA
update; then validation (clean and PGD-40 accuracy of the EMA weights when EMA is on) on the
held-out examples, a metrics row, ``last.pt``, ``best.pt`` when the PGD-40 accuracy improved,
``status.json`` and ``cost.json``. Hot-loop statistics stay on the device and are read only at
log intervals and checkpoints. A run directory that already holds a checkpoint is resumed
exactly; see ``robustscale/train/checkpoint.py``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from robustscale.attacks.pgd import frozen_bn_stats, pgd_accuracy
from robustscale.cost.accounting import JOULES_PER_KWH
from robustscale.data.batches import seeded_generator
from robustscale.device import resolve_device
from robustscale.errors import RobustscaleError, first_line
from robustscale.losses import clean_monitor_steps, compute_loss, samples_clean_accuracy
from robustscale.recipe import Recipe
from robustscale.runs import METRIC_COLUMNS, CostRecord, MetricsRow, RunDir, RunFileError
from robustscale.threads import configure_cpu_threads, warn_if_changed
from robustscale.train import checkpoint as ckpt
from robustscale.train import distributed
from robustscale.train.records import check_run_dir, create_run_dir, remove_debris, write_status
from robustscale.train.setup import (
    Forward,
    check_precision,
    enable_grad_checkpointing,
    make_ema,
    make_optimizer,
    make_scheduler,
    prepare_data,
    seed_everything,
    training_device,
)

log = logging.getLogger(__name__)

SINGLE_PROCESS = distributed.DistEnv()  # the default of _Engine: no DDP, rank 0 of 1
LOG_EVERY = 25  # steps between host syncs (finite-loss check, progress-bar postfix)


class TrainingDiverged(RobustscaleError):
    """The loss became NaN or infinite."""


@dataclass
class Progress:
    """Where the run is and what it has spent; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed in the current epoch
    best_score: float = -math.inf
    best_epoch: int | None = None
    best_val_pgd: float | None = None
    cost: dict[str, Any] = field(
        default_factory=lambda: {
            "train_flops": 0.0,
            "train_flops_paper": 0.0,
            "val_flops": 0.0,
            "examples_seen": 0,
            "device_seconds": 0.0,
            "energy_joules": None,
        }
    )
    # partial-epoch accumulators, so a resumed epoch reports the same numbers
    acc: dict[str, float] = field(
        default_factory=lambda: {
            "loss": 0.0,
            "clean": 0.0,
            "adv": 0.0,
            "n": 0.0,
            "n_clean": 0.0,
            "seconds": 0.0,
            "joules": 0.0,
        }
    )


def train(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    *,
    out_root: str | Path = "runs",
    progress: bool = True,
    final_eval: str | None = None,
) -> Path:
    """Train ``recipe`` into ``run_dir`` (default ``<out_root>/<run_id>``), resuming it if it holds
    a checkpoint; returns the run directory. A finished run is left as it is."""
    run = RunDir(Path(run_dir) if run_dir is not None else Path(out_root) / recipe.run_id)
    dist = distributed.init_from_env(recipe.device)  # torchrun: one run, several processes
    clean = started = False

    def failed(exc: BaseException) -> None:  # record why, keep the last good checkpoint
        if isinstance(exc, RunFileError):  # a damaged file: reported, and no other file changed
            return
        reason = (
            "interrupted"
            if isinstance(exc, KeyboardInterrupt)
            else (str(exc) if isinstance(exc, RobustscaleError) else f"{type(exc).__name__}: {exc}")
        )
        if started and dist.is_main and run.recipe.exists():
            write_status(run, recipe, "failed", reason=reason)

    try:
        done = check_run_dir(run, recipe) if dist.is_main else False
        if dist.is_main and recipe.trackers:  # a missing extra or folder fails before any write
            from robustscale.trackers import check_trackers

            check_trackers(recipe.trackers, run.path)
        distributed.barrier(dist)
        if not dist.is_main:
            status = run.read_status()
            done = status is not None and status.state == "done"
        started = True
        if done:
            if dist.is_main:
                remove_debris(run)
                _note_threads(run, recipe.device, "run again")
            clean = True
        else:
            # Data, model and FLOPs are set up before anything is written, so a bad value
            # (an unknown model, val_size larger than the data) leaves no run directory behind.
            engine = _Engine(recipe, run, progress, dist)
            if dist.is_main:
                create_run_dir(run, recipe)
            distributed.barrier(dist)
            engine.fit()
            del engine
            clean = True
    except BaseException as exc:
        failed(exc)
        raise
    finally:
        distributed.shutdown(dist, clean=clean)
    if not dist.is_main:
        return run.path
    if final_eval:  # also on a run that was already done, unless its result is there
        from robustscale.evaluate import eval_filename, evaluate_run

        result = run.eval / eval_filename(final_eval, recipe.eps)
        if result.is_file():
            log.info("final %s evaluation already in %s", final_eval, result)
        else:
            evaluate_run(run.path, attack=final_eval, checkpoint="best")
    return run.path


class _Engine:
    """The state of one run while it trains (few fields; the loop itself is ``fit``)."""

    def __init__(
        self,
        recipe: Recipe,
        run: RunDir,
        show_progress: bool,
        dist: distributed.DistEnv = SINGLE_PROCESS,
    ):
        from robustscale.cost import measure_step_flops, open_meter

        self.dist, self.main = dist, dist.is_main  # only the main process writes files
        self.r, self.run, self.show_progress = recipe, run, show_progress and dist.is_main
        self.device = training_device(recipe.device)
        check_precision(recipe.precision, self.device)
        self.threads = configure_cpu_threads() if self.device.type == "cpu" else None
        seed_everything(recipe.seed)
        self.data = prepare_data(recipe, self.device, dist.rank, dist.world_size)
        from robustscale.models import build_model_for

        info = self.data.info
        model = build_model_for(recipe, info).to(self.device)
        if recipe.grad_checkpointing:
            enable_grad_checkpointing(model, recipe.model)
        if recipe.channels_last:
            model = model.to(memory_format=torch.channels_last)
        plain = model  # FLOPs are counted on a meta copy of this one (SyncBatchNorm needs a GPU)
        self.model = model = distributed.prepare_model(
            model, dist, self.device, sync_bn=recipe.sync_bn
        )
        self.forward = Forward(
            model,
            recipe.precision,
            recipe.channels_last,
            recipe.compile,
            self.device,
            ddp=distributed.wrap(model, dist, self.device),
        )
        self.ema = make_ema(model, recipe.ema_decay)
        eval_net = self.ema.module if self.ema is not None else model
        self.eval_forward = Forward(
            eval_net, recipe.precision, recipe.channels_last, False, self.device
        )
        self.opt = make_optimizer(
            model, recipe.lr, recipe.momentum, recipe.nesterov, recipe.weight_decay, self.device
        )
        self.sched = make_scheduler(
            self.opt,
            recipe.schedule,
            recipe.epochs,
            recipe.warmup_epochs,
            recipe.lr,
            self.data.plan.steps_per_epoch,
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if recipe.precision == "fp16" else None
        # the first forward (on the meta device): a model that cannot take these images fails here
        try:
            self.flops = measure_step_flops(
                plain,
                recipe.loss,
                info.shape,
                info.num_classes,
                eps=recipe.eps,
                step_size=recipe.step_size,
                attack_steps=recipe.attack_steps,
                trades_beta=recipe.trades_beta,
                val_steps=recipe.val_attack_steps,
            )
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise RobustscaleError(
                f"model={recipe.model!r} cannot run on {recipe.dataset} images of shape "
                f"{tuple(info.shape)}: {first_line(exc)}"
            ) from None
        # Meter the GPU this process trains on, not every visible one: under DDP each process
        # meters its own and the sums are all-reduced, so no device is counted twice.
        self.meter = open_meter(
            self.device,
            interval=recipe.power_sample_interval,
            power_watts=recipe.power_watts,
            devices=[self.device.index] if self.device.type == "cuda" else None,
        )
        self.p = Progress()
        self.trackers = None  # robustscale.trackers.TrackerSet, opened by fit on the main process

    # ---- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.opt.state_dict(),
            # timm's schedulers are a pure function of the update count, which is all they need.
            "scheduler": {
                "num_updates": self.p.epoch * self.data.plan.steps_per_epoch + self.p.step
            },
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "progress": {k: getattr(self.p, k) for k in Progress.__dataclass_fields__},
            "rng": ckpt.rng_state(),
            "recipe": self.r.to_dict(),
        }

    def _save_last(self) -> None:
        if not self.main:
            return
        ckpt.save_checkpoint(self.run.checkpoints / "last.pt", self._state(), keep_previous=True)

    def _resume(self) -> None:
        state, path = ckpt.load_resume_checkpoint(self.run.checkpoints)
        if (
            state is None
        ):  # a fresh start: rows left by an attempt killed before its first checkpoint go
            if self.main and self.run.metrics.exists():
                self.run.rewrite_metrics([])
            return
        if self.main and self.threads is not None:
            warn_if_changed(
                self.run.path, getattr(_status_or_none(self.run), "threads", None), self.threads
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for k, v in state["progress"].items():
            setattr(
                self.p, k, {**getattr(self.p, k), **v} if k == "acc" else v
            )  # older files lack n_clean
        if not self.main:  # energy stashed mid-epoch was the main process's own
            self.p.acc["joules"] = 0.0
        ckpt.set_rng_state(state["rng"])
        # metrics rows written after this checkpoint are replayed by the resumed run
        if self.main:
            self.run.rewrite_metrics(self._kept_metrics())
        log.info(
            "resuming %s from %s at epoch %d step %d",
            self.run.path,
            path.name,
            self.p.epoch + 1,
            self.p.step,
        )

    def _kept_metrics(self) -> list[MetricsRow]:
        """The metrics rows up to the resumed checkpoint (later ones are replayed); rows that
        do not reach the checkpoint's epoch mean a damaged metrics.csv: one line, nothing
        changed."""
        rows = [row for row in self.run.read_metrics() if row.epoch <= self.p.epoch]
        epochs = [row.epoch for row in rows]
        if epochs != list(range(1, self.p.epoch + 1)):
            raise RunFileError(
                self.run.metrics,
                f"holds rows for epochs {_span(epochs)} but the "
                f"checkpoint has completed {self.p.epoch}",
            )
        return rows

    # ---- the loop ------------------------------------------------------------------------------

    def fit(self) -> None:
        """Train to the last epoch; the run's trackers are closed however it ends."""
        try:
            self._fit()
        finally:
            if self.trackers is not None:
                self.trackers.close(finished=self.p.epoch >= self.r.epochs)

    def _fit(self) -> None:
        r = self.r
        self._resume()
        if self.main:
            write_status(self.run, r, "running", self.p, threads=self.threads)
        log.info(
            "run %s: %s, %d params, %d steps/epoch, %.3g training FLOPs/example",
            self.run.path,
            r.model,
            sum(p.numel() for p in self.model.parameters()),
            self.data.plan.steps_per_epoch,
            self.flops.train,
        )
        if self.main and r.trackers:  # open them; send the rows an interrupted process did not
            from robustscale.trackers import open_trackers

            self.trackers = open_trackers(r.trackers, self.run.path, r.to_dict(), r.run_id)
            self._sync_trackers()
        for epoch in range(self.p.epoch, r.epochs):
            self._train_epoch(epoch)
            self._end_epoch(epoch)
        if self.main:
            write_status(self.run, r, "done", self.p, threads=self.threads)
            self._write_cost()
        self.meter.close()

    def _sync_trackers(self) -> None:
        """Trackers read the epoch back from metrics.csv and cost.json, so they equal the files."""
        if self.trackers is not None:
            self.trackers.sync_epochs()

    def _train_epoch(self, epoch: int) -> None:
        r, plan, p = self.r, self.data.plan, self.p
        dev = self.device
        # Under DDP the saved sums are global: the main process carries them, the others start at 0.
        acc = {
            k: torch.tensor(p.acc[k] if self.main else 0.0, dtype=torch.float64, device=dev)
            for k in ("loss", "clean", "adv", "n", "n_clean")
        }
        rank_salt = (self.dist.rank,) if self.dist.enabled else ()
        bad = torch.tensor(-1, device=dev)
        t0, j0 = time.perf_counter(), self._joules()
        self.forward.train()
        bar = self._bar(epoch, p.step)
        for step, x, y in self.data.stream.epoch(epoch, p.step):
            self.sched.step_update(epoch * plan.steps_per_epoch + step)
            g = seeded_generator(r.seed, epoch, step, 7, *rank_salt, device=dev)
            if samples_clean_accuracy(r.loss, step):  # PGD-AT's sampled clean accuracy
                with torch.no_grad(), frozen_bn_stats(self.model):
                    acc["clean"] += (self.forward(x).argmax(1) == y).sum()
                acc["n_clean"] += len(y)
            out = compute_loss(
                r.loss,
                self.forward,
                x,
                y,
                eps=r.eps,
                step_size=r.step_size,
                steps=r.attack_steps,
                beta=r.trades_beta,
                generator=g,
            )
            if self.scaler is not None:
                self.scaler.scale(out.loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                out.loss.backward()
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model, step=epoch * plan.steps_per_epoch + step)
            loss = out.loss.detach()
            bad = torch.where((bad < 0) & ~torch.isfinite(loss), step, bad)
            acc["loss"] += loss * len(y)
            acc["n"] += len(y)
            if out.logits_clean is not None:
                acc["clean"] += (out.logits_clean.argmax(1) == y).sum()
                acc["n_clean"] += len(y)
            if out.logits_adv is not None:
                acc["adv"] += (out.logits_adv.argmax(1) == y).sum()
            p.step = step + 1
            if bar is not None:
                bar.update(len(y))
            if p.step % LOG_EVERY == 0 or p.step == plan.steps_per_epoch:
                self._check_finite(bad, epoch)
                if bar is not None:
                    bar.set_postfix(loss=f"{acc['loss'].item() / max(acc['n'].item(), 1):.4f}")
            if (
                r.checkpoint_every_steps
                and p.step % r.checkpoint_every_steps == 0
                and p.step < plan.steps_per_epoch
            ):
                self._check_finite(bad, epoch)
                self._stash(acc, t0, j0)
                self._save_last()
                t0, j0 = time.perf_counter(), self._joules()
        if bar is not None:
            bar.close()
        self._check_finite(bad, epoch)
        self._stash(acc, t0, j0)

    def _check_finite(self, bad: torch.Tensor, epoch: int) -> None:
        b = int(bad.item())
        if b >= 0:
            raise TrainingDiverged(
                f"{self.r.loss} training loss is not finite at epoch {epoch + 1}, step {b + 1}; "
                "the last good checkpoint is kept"
            )

    def _stash(self, acc: dict[str, torch.Tensor], t0: float, j0: float | None) -> None:
        """Move device accumulators and elapsed time/energy into the checkpointable progress."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.dist.enabled:  # sums over the processes; the loop keeps its own (local) tensors
            acc = {k: v.clone() for k, v in acc.items()}
            distributed.all_reduce_sum(self.dist, list(acc.values()))
        for k, v in acc.items():
            self.p.acc[k] = float(v.item())
        self.p.acc["seconds"] += time.perf_counter() - t0
        j1 = self._joules()
        if j0 is not None and j1 is not None:
            self.p.acc["joules"] += j1 - j0

    @property
    def _num_devices(self) -> int:
        """Devices the run occupies: each process's GPU under DDP; CPU processes share one
        machine."""
        return self.meter.num_devices * (self.dist.world_size if self.device.type == "cuda" else 1)

    @property
    def _metered(self) -> bool:
        """Energy is known: measured, or estimated from power_watts because the user asked (labelled
        so)."""
        return self.meter.source != "none"

    def _joules(self) -> float | None:
        return self.meter.read_joules()

    def _bar(self, epoch: int, start_step: int):
        from robustscale.progress import bar, bars_on

        if not bars_on(self.show_progress):
            return None  # each epoch logs its own line
        plan = self.data.plan
        return bar(
            plan.examples_per_epoch,
            f"epoch {epoch + 1}/{self.r.epochs}",
            unit="img",
            initial=start_step * plan.batch_size,
            unit_scale=True,
        )

    def _end_epoch(self, epoch: int) -> None:
        r, p, plan = self.r, self.p, self.data.plan
        t0, j0 = time.perf_counter(), self._joules()
        val_clean, val_pgd = self._validate() if self.main else (None, None)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = p.acc["seconds"] + time.perf_counter() - t0
        j1 = self._joules()
        joules = p.acc["joules"] + (j1 - j0 if j0 is not None and j1 is not None else 0.0)
        if self.device.type == "cpu" and not self.main:
            joules = 0.0  # CPU processes share the package(s) rank 0 meters
        joules = distributed.sum_float(self.dist, joules, self.device)  # every process's devices
        n = max(p.acc["n"], 1.0)
        examples = plan.examples_per_epoch
        val_n = 0 if self.data.val is None else len(self.data.val[1])
        # FLOPs outside the training objective: validation, and PGD-AT's sampled clean forwards
        val_flops = (
            self.flops.val * val_n
            + self.flops.forward
            * clean_monitor_steps(r.loss, plan.steps_per_epoch)
            * plan.batch_size
        )
        row = MetricsRow(
            epoch=epoch + 1,
            lr=self.opt.param_groups[0]["lr"],
            train_loss=p.acc["loss"] / n,
            train_clean_acc=100.0 * p.acc["clean"] / p.acc["n_clean"] if p.acc["n_clean"] else None,
            train_robust_acc=100.0 * p.acc["adv"] / n if r.adversarial else None,
            val_clean_acc=val_clean,
            val_pgd_acc=val_pgd,
            epoch_flops=self.flops.train * examples,
            val_flops=val_flops,
            epoch_energy_kwh=self._kwh(joules) if self._metered else None,
            seconds=seconds,
            examples=examples,
        )
        c = p.cost
        c["train_flops"] += self.flops.train * examples
        c["train_flops_paper"] += self.flops.train_paper * examples
        c["val_flops"] += val_flops
        c["examples_seen"] += examples
        c["device_seconds"] += seconds * self._num_devices
        if self._metered:
            c["energy_joules"] = (c["energy_joules"] or 0.0) + joules
        score = val_pgd if (r.adversarial and val_pgd is not None) else val_clean
        improved = score is None or score > p.best_score
        p.epoch, p.step = epoch + 1, 0
        p.acc = {k: 0.0 for k in p.acc}
        if improved and self.main:
            p.best_score = score if score is not None else p.best_score
            p.best_epoch, p.best_val_pgd = epoch + 1, val_pgd
            eval_net = self.ema.module if self.ema is not None else self.model
            ckpt.save_checkpoint(
                self.run.checkpoints / "best.pt",
                {
                    "model": eval_net.state_dict(),
                    "epoch": epoch + 1,
                    "val_clean_acc": val_clean,
                    "val_pgd_acc": val_pgd,
                    "val_attack_steps": r.val_attack_steps,
                    "recipe": r.to_dict(),
                },
            )
        if self.main:
            self.run.append_metrics(row)
            self._save_last()
            self._write_cost()
            write_status(self.run, r, "running", p, threads=self.threads)
            self._sync_trackers()
        log.info(
            "epoch %d/%d  loss %.4f  train clean %s%s  |  val clean %s  pgd%d %s  |  %.1fs",
            epoch + 1,
            r.epochs,
            row.train_loss,
            _fmt(row.train_clean_acc),
            f" robust {row.train_robust_acc:.1f}" if row.train_robust_acc is not None else "",
            _fmt(val_clean),
            r.val_attack_steps,
            _fmt(val_pgd),
            seconds,
        )

    def _validate(self) -> tuple[float | None, float | None]:
        """Clean and PGD-k accuracy (step eps/4, fixed seed) of the weights being selected."""
        if self.data.val is None:
            return None, None
        r = self.r
        vx, vy = self.data.val
        self.eval_forward.eval()
        clean, robust = pgd_accuracy(
            self.eval_forward,
            vx,
            vy,
            r.eps,
            r.val_attack_steps,
            r.eps / 4,
            batch_size=max(r.batch_size, 256),
            seed=r.seed,
        )
        n = len(vy)
        return 100.0 * clean.item() / n, 100.0 * robust.item() / n

    def _kwh(self, joules: float) -> float:
        return joules / JOULES_PER_KWH * self.r.pue

    def _write_cost(self) -> None:
        from robustscale.cost import bill

        c, r = self.p.cost, self.r
        money = bill(
            c["energy_joules"], pue=r.pue, usd_per_kwh=r.usd_per_kwh, gco2_per_kwh=r.gco2_per_kwh
        )
        self.run.write_cost(
            CostRecord(
                params=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                forward_flops=self.flops.forward,
                train_flops_per_example=self.flops.train,
                train_flops_paper_per_example=self.flops.train_paper,
                val_flops_per_example=self.flops.val,
                train_flops=c["train_flops"],
                train_flops_paper=c["train_flops_paper"],
                val_flops=c["val_flops"],
                examples_seen=c["examples_seen"],
                synthetic_size=self.data.synthetic_size,
                unique_synthetic_seen=self.data.plan.unique_synthetic_seen(
                    self.p.epoch * self.data.plan.steps_per_epoch + self.p.step
                ),
                unique_real_seen=self.data.plan.unique_real_seen(
                    self.p.epoch * self.data.plan.steps_per_epoch + self.p.step
                ),
                device_seconds=c["device_seconds"],
                device_hours=c["device_seconds"] / 3600.0,
                energy_kwh=money["energy_kwh"],
                electricity_cost_usd=money["electricity_cost_usd"],
                co2_kg=money["co2_kg"],
                energy_measured=self.meter.measured,
                energy_source=self.meter.source,
                pue=r.pue,
                usd_per_kwh=r.usd_per_kwh,
                gco2_per_kwh=r.gco2_per_kwh,
                devices=list(self.meter.device_names),
                num_devices=self._num_devices,
            )
        )


def _span(epochs: list[int]) -> str:
    if not epochs:
        return "none"
    return (
        ", ".join(map(str, epochs))
        if len(epochs) <= 4
        else f"{epochs[0]}..{epochs[-1]} ({len(epochs)} rows)"
    )


def _status_or_none(run: RunDir) -> Any:
    """The run's Status, or None when it has none or it cannot be read (the warning is optional)."""
    try:
        return run.read_status()
    except RobustscaleError:
        return None


def _note_threads(run: RunDir, device: str, what: str) -> None:
    """Warn when a finished CPU run is used again under another thread count than it trained
    with."""
    try:
        if resolve_device(device).type != "cpu":
            return
    except RobustscaleError:
        return
    warn_if_changed(
        run.path, getattr(_status_or_none(run), "threads", None), configure_cpu_threads(), what
    )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


__all__ = ["train", "METRIC_COLUMNS", "TrainingDiverged"]
