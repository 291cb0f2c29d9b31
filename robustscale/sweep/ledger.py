"""The sweep ledger: one SQLite file (``<sweep folder>/ledger.sqlite``) with the state of every run.

A run is ``pending``, ``running`` (held by a lease: a random token, host, pid and a heartbeat
time), ``done`` or ``failed`` (with the number of attempts and the last error). Launchers take
runs with :meth:`Ledger.claim`, a ``BEGIN IMMEDIATE`` transaction: SQLite lets one writer in at
a time, so two launchers on the same folder never take the same run. A lease whose heartbeat
is older than the lease timeout (or whose holder is a dead process on this host) is taken over.

The file is opened in WAL mode (readers never wait for the writer) with a busy timeout. WAL
needs shared memory between the processes, i.e. one host; a ledger that jobs on several
cluster nodes write over a network filesystem is created in rollback-journal mode instead
(``wal=False``, what the Slurm launcher does). Nothing here needs a server.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustscale.errors import RobustscaleError

STATES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    idx        INTEGER NOT NULL,
    label      TEXT NOT NULL DEFAULT '',
    state      TEXT NOT NULL DEFAULT 'pending',
    attempts   INTEGER NOT NULL DEFAULT 0,
    lease      TEXT,
    host       TEXT,
    pid        INTEGER,
    heartbeat  REAL,
    started    REAL,
    finished   REAL,
    last_error TEXT,
    job_id     TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Claim:
    """A lease on one run: whoever holds the token may heartbeat and finish it."""

    run_id: str
    token: str
    attempt: int
    took_over: str | None  # "host:pid" of the previous holder whose lease had gone stale


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Ledger:
    """The run states of one sweep folder. Each call opens its own short connection, so a
    ledger object may be shared by threads."""

    def __init__(
        self, path: str | Path, *, wal: bool = True, busy_timeout: float = 60.0, create: bool = True
    ):
        """``create=False`` (readers such as ``status``) opens an existing ledger without
        creating or repairing anything: a file that is not a ledger is one line."""
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.host = socket.gethostname()
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._init_schema(wal)
            else:
                self._check_schema()
        except (sqlite3.Error, OSError) as exc:
            raise RobustscaleError(
                f"cannot open the sweep ledger {str(self.path)!r}: {exc}; restore it, "
                "or start the sweep again into a new --out folder"
            ) from None

    def _check_schema(self) -> None:
        if not self.path.is_file():
            raise RobustscaleError(f"sweep ledger {str(self.path)!r} does not exist")
        with self._connect() as con:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        missing = {"runs", "meta"} - tables
        if missing:
            raise RobustscaleError(
                f"sweep ledger {str(self.path)!r} has no {', '.join(sorted(missing))} table "
                "(damaged or not a ledger); restore it, or start the sweep again into "
                "a new --out folder"
            )

    def _init_schema(self, wal: bool) -> None:
        # Two launchers starting together can both try to switch the journal mode or create the
        # tables; SQLite then reports "database is locked" at once, without waiting on the busy
        # handler (a lock-upgrade deadlock between readers). Retry until the busy timeout.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                with self._connect() as con:
                    if wal and con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        con.execute("PRAGMA journal_mode=WAL")
                    con.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05 + random.random() * 0.2)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database's write lock at once (BEGIN IMMEDIATE)."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # ---- the sweep's runs ------------------------------------------------------------------

    def add_runs(self, runs: list[tuple[str, int, str]]) -> None:
        """Record (run_id, index, label) rows; runs already known keep their state."""
        with self._transaction() as con:
            con.executemany(
                "INSERT INTO runs (run_id, idx, label) VALUES (?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET idx = excluded.idx, label = excluded.label",
                runs,
            )

    def set_meta(self, **values: Any) -> None:
        with self._transaction() as con:
            con.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def meta(self) -> dict[str, Any]:
        with self._connect() as con:
            rows = list(con.execute("SELECT key, value FROM meta"))
        try:
            return {r["key"]: json.loads(r["value"]) for r in rows}
        except (TypeError, ValueError):
            raise RobustscaleError(
                f"sweep ledger {str(self.path)!r} has a meta value that is not JSON; "
                "restore it, or start the sweep again into a new --out folder"
            ) from None

    def rows(self, run_ids: list[str] | None = None) -> list[dict[str, Any]]:
        with self._connect() as con:
            if run_ids is None:
                cur = con.execute("SELECT * FROM runs ORDER BY idx, run_id")
            else:
                cur = con.execute(
                    "SELECT * FROM runs WHERE run_id IN (SELECT value FROM json_each(?)) "
                    "ORDER BY idx, run_id",
                    (json.dumps(run_ids),),
                )
            rows = [dict(r) for r in cur]
        for row in rows:
            if row.get("state") not in STATES:
                raise RobustscaleError(
                    f"sweep ledger {str(self.path)!r}: run {row.get('run_id')!r} has "
                    f"state {row.get('state')!r}; "
                    f"allowed: {', '.join(STATES)}; restore the ledger, or set "
                    "the run's state to pending"
                )
        return rows

    # ---- leases ----------------------------------------------------------------------------

    def _stale(self, row: sqlite3.Row, now: float, lease_timeout: float) -> bool:
        if row["heartbeat"] is None or now - row["heartbeat"] > lease_timeout:
            return True
        return row["host"] == self.host and row["pid"] is not None and not pid_alive(row["pid"])

    def _claimable(
        self, row: sqlite3.Row, now: float, max_attempts: int, lease_timeout: float
    ) -> bool:
        if row["state"] == "pending":
            return True
        if row["state"] == "failed":
            return row["attempts"] < max_attempts
        return row["state"] == "running" and self._stale(row, now, lease_timeout)

    def claim(
        self,
        run_ids: list[str],
        *,
        max_attempts: int,
        lease_timeout: float,
        pid: int | None = None,
        job_id: str | None = None,
    ) -> Claim | None:
        """Take the first run (in sweep order) among ``run_ids`` that is pending, failed with
        attempts left, or running under a stale lease; None when there is none."""
        now = time.time()
        with self._transaction() as con:
            rows = con.execute(
                "SELECT * FROM runs WHERE run_id IN (SELECT value FROM json_each(?)) "
                "AND state != 'done' ORDER BY idx",
                (json.dumps(run_ids),),
            ).fetchall()
            row = next(
                (r for r in rows if self._claimable(r, now, max_attempts, lease_timeout)), None
            )
            if row is None:
                return None
            token = uuid.uuid4().hex
            con.execute(
                "UPDATE runs SET state = 'running', lease = ?, host = ?, pid = ?, heartbeat = ?, "
                "started = ?, finished = NULL, attempts = attempts + 1, "
                "job_id = ? WHERE run_id = ?",
                (token, self.host, pid or os.getpid(), now, now, job_id, row["run_id"]),
            )
        took_over = f"{row['host']}:{row['pid']}" if row["state"] == "running" else None
        return Claim(row["run_id"], token, row["attempts"] + 1, took_over)

    def heartbeat(self, claim: Claim) -> bool:
        """Renew the lease; False when it was lost (taken over by another launcher)."""
        with self._transaction() as con:
            cur = con.execute(
                "UPDATE runs SET heartbeat = ? WHERE run_id = ? AND lease "
                "= ? AND state = 'running'",
                (time.time(), claim.run_id, claim.token),
            )
            return cur.rowcount == 1

    def finish(self, claim: Claim, ok: bool, error: str | None = None) -> bool:
        """Record the end of an attempt; False (and nothing written) when the lease was lost."""
        with self._transaction() as con:
            cur = con.execute(
                "UPDATE runs SET state = ?, lease = NULL, finished = ?, last_error = ? "
                "WHERE run_id = ? AND lease = ?",
                (
                    "done" if ok else "failed",
                    time.time(),
                    None if ok else error,
                    claim.run_id,
                    claim.token,
                ),
            )
            return cur.rowcount == 1

    def release(self, claim: Claim, note: str | None = None) -> bool:
        """Give a run back as pending without counting the attempt (interrupted, pre-empted)."""
        with self._transaction() as con:
            cur = con.execute(
                "UPDATE runs SET state = 'pending', lease = NULL, attempts = MAX(attempts - 1, 0), "
                "last_error = COALESCE(?, last_error) WHERE run_id = ? AND lease = ?",
                (note, claim.run_id, claim.token),
            )
            return cur.rowcount == 1

    def record_jobs(self, jobs: list[tuple[str, str]]) -> None:
        """Note the scheduler job id of each (run_id, job_id) just submitted."""
        with self._transaction() as con:
            con.executemany(
                "UPDATE runs SET job_id = ? WHERE run_id = ?", [(j, r) for r, j in jobs]
            )

    def unsettled(
        self, run_ids: list[str], *, max_attempts: int, lease_timeout: float
    ) -> dict[str, int]:
        """Counts of runs that are not settled yet: ``claimable`` now, or ``held`` under a live
        lease by someone (maybe this launcher). A sweep is over when both are zero."""
        now = time.time()
        with self._connect() as con:
            rows = con.execute(
                "SELECT * FROM runs WHERE run_id IN (SELECT value FROM json_each(?)) "
                "AND state != 'done'",
                (json.dumps(run_ids),),
            ).fetchall()
        claimable = sum(self._claimable(r, now, max_attempts, lease_timeout) for r in rows)
        held = sum(r["state"] == "running" and not self._stale(r, now, lease_timeout) for r in rows)
        return {"claimable": claimable, "held": held}


class Heartbeat:
    """A background thread that renews this process's leases every ``interval`` seconds and
    calls ``on_lost(claim)`` for a lease that another launcher has taken over."""

    def __init__(
        self, ledger: Ledger, interval: float, on_lost: Callable[[Claim], None] | None = None
    ):
        self.ledger, self.interval, self.on_lost = ledger, interval, on_lost
        self._claims: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="robustscale-heartbeat", daemon=True
        )
        self._thread.start()

    def add(self, claim: Claim) -> None:
        with self._lock:
            self._claims[claim.run_id] = claim

    def remove(self, claim: Claim) -> None:
        with self._lock:
            self._claims.pop(claim.run_id, None)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                claims = list(self._claims.values())
            for claim in claims:
                try:
                    alive = self.ledger.heartbeat(claim)
                except sqlite3.Error:
                    continue  # busy past the timeout: try again next beat
                if not alive:
                    self.remove(claim)
                    if self.on_lost is not None:
                        self.on_lost(claim)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
