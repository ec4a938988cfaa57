"""The run store: runs, their metrics, masks and events in one SQLite file.

The dashboard, the job runner and the CLI share this store. It is plain stdlib `sqlite3`
in WAL mode, so one writer and many readers (other processes included) work at once:

    store = Store()                      # $ASYMVIZ_HOME/asymviz.db (default ~/.asymviz)
    store = Store(":memory:")            # tests
    run_id = store.create_run({"dataset": "digits", "strategy": "neuron"}, owner="ana")
    run = store.claim_next(os.getpid(), socket.gethostname())   # a worker takes it
    with store.writer(run["id"]) as w:   # batched: one transaction per flush
        w.add_step({"step": 0, "epoch": 0, "train/loss": 2.3})
    store.set_status(run["id"], "finished", summary={"test_acc": 0.97})
    store.steps_downsampled(run_id, max_points=500)    # a chart never loads a long run whole

Tables (see MIGRATIONS): `runs` (one row per run; `config` and `summary` are JSON text),
`steps` and `epochs` (one flat metric dict per row, JSON), `masks` (the kept neuron indices
per layer per step, packed into a BLOB; optional connection-mask snapshot), `events` (a log),
`artifacts` (other JSON records of a run by kind, e.g. a decision-boundary grid per epoch),
`owners` (the names dashboard users claimed, each with a salted slow hash of its PIN),
`experiments` (one row per experiment: its spec, launches, stops, width-sweep timings) and
`experiment_runs` (which cell of which experiment a run stands for).
Queries return dicts. Every write is one `BEGIN IMMEDIATE` transaction; a write that finds the
file locked waits (`busy_timeout`) and then retries with backoff, so "database is locked" does
not reach callers (after about a minute of contention it becomes a `StoreError`).

A run moves `queued -> running -> finished | stopped | failed | diverged | interrupted`;
`reconcile()` marks runs whose worker died `interrupted` and keeps their metrics. A queued run
may be `held` (no worker takes it); a paused run that gave its worker back goes from `running`
to queued and held, with a checkpoint to resume from (asymviz.pace).

One `Store` is safe to share between threads (one connection behind a lock). Across processes,
open one `Store` per process; a `Store` carried into a forked child reconnects there.

Two ways a store can be pulled from under a running lab are refused before SQLite sees them,
each as one StoreError sentence: the file deleted or replaced at its path while open (the inode
differs; `StoreReplaced`: this process never writes the old file again, which shares its -wal
and -shm files with the new one), and the files made read-only or immutable while open (SQLite
writes its -shm through a shared memory map even to read, and a write to an immutable mapped
file kills the process with SIGBUS instead of returning an error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import sqlite3
import struct
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from asymviz.errors import AsymvizError, ConfigError
from asymviz.lab import home, pid_alive

STATUSES = ("queued", "running", "finished", "stopped", "failed", "diverged", "interrupted")
TERMINAL = frozenset({"finished", "stopped", "failed", "diverged", "interrupted"})
# Which status may follow which. A status may always be set again (idempotent).
TRANSITIONS = {
    "queued": frozenset({"running", "stopped", "failed"}),
    "running": TERMINAL,
    **{status: frozenset() for status in TERMINAL},
}

BUSY_TIMEOUT_S = 10.0  # SQLite waits this long for a lock before giving up ...
WRITE_RETRIES = 5  # ... and we retry this many more times, with backoff, on top.

# Schema migrations, in order: MIGRATIONS[i] brings a file from version i to version i + 1.
# Never edit a released migration; append a new one.
MIGRATIONS = [
    """
    CREATE TABLE schema_version (
        version INTEGER PRIMARY KEY,
        applied_at REAL NOT NULL                -- unix seconds
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused, so a link to run 12 stays true
        created_at REAL NOT NULL,               -- unix seconds, as every *_at column
        started_at REAL,
        finished_at REAL,
        owner TEXT NOT NULL,
        config TEXT NOT NULL,                   -- JSON
        status TEXT NOT NULL,                   -- one of STATUSES
        error TEXT,                             -- one sentence, for failed / interrupted runs
        summary TEXT,                           -- JSON
        worker_pid INTEGER,
        worker_host TEXT,
        heartbeat_at REAL,
        stop_requested INTEGER NOT NULL DEFAULT 0,
        tag TEXT,                               -- free-form group, e.g. an experiment id
        progress REAL                           -- 0..1
    );
    CREATE INDEX runs_by_status ON runs (status, id);
    CREATE INDEX runs_by_owner ON runs (owner, status);
    CREATE INDEX runs_by_tag ON runs (tag, id);
    CREATE TABLE steps (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        epoch INTEGER,
        data TEXT NOT NULL,                     -- JSON of the flat metric dict, less step/epoch
        PRIMARY KEY (run_id, step)
    ) WITHOUT ROWID;
    CREATE TABLE epochs (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        epoch INTEGER NOT NULL,
        data TEXT NOT NULL,                     -- JSON of the flat metric dict, less epoch
        PRIMARY KEY (run_id, epoch)
    ) WITHOUT ROWID;
    CREATE TABLE masks (
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        layer INTEGER NOT NULL,
        n INTEGER NOT NULL,                     -- layer width
        kept BLOB NOT NULL,                     -- kept neuron indices, see _encode_kept
        conn BLOB,                              -- optional connection mask, see pack_mask
        PRIMARY KEY (run_id, layer, step)
    );
    CREATE INDEX masks_by_step ON masks (run_id, step);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER REFERENCES runs (id) ON DELETE CASCADE,   -- NULL: about the server
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_by_run ON events (run_id, id);
    """,
    """
    CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        step INTEGER,
        epoch INTEGER,
        kind TEXT NOT NULL,                     -- e.g. "decision_grid" (see asymviz.jobs)
        data TEXT NOT NULL                      -- JSON
    );
    CREATE INDEX artifacts_by_run ON artifacts (run_id, kind, id);
    """,
    """
    CREATE TABLE owners (                       -- names claimed with a PIN (see asymviz.owners)
        key TEXT PRIMARY KEY,                   -- the name casefolded: "Ana" and "ana" are one name
        name TEXT NOT NULL,                     -- as first claimed: the owner of its runs
        kdf TEXT NOT NULL,                      -- how pin_hash was derived, e.g. "scrypt:16384:8:1"
        salt BLOB NOT NULL,                     -- random, new with every PIN
        pin_hash BLOB NOT NULL,                 -- kdf(PIN, salt); the PIN itself is never stored
        claimed_at REAL NOT NULL,
        pin_set_at REAL NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,    -- PIN attempts since the last right one
        locked_until REAL                       -- no PIN of this name is checked before then
    );
    """,
    """
    CREATE TABLE experiments (
        id TEXT PRIMARY KEY,                    -- "exp-" and 10 hex digits of the spec's hash
        owner TEXT NOT NULL,
        spec TEXT NOT NULL,                     -- JSON of asymviz.experiment.ExperimentSpec
        created_at REAL NOT NULL,
        launched_at REAL,                       -- the latest launch (launching again resumes)
        launched_by TEXT,
        stopped_at REAL,                        -- the latest stop: stopped while stopped_at >= launched_at
        speed TEXT,                             -- JSON: the width sweep's timings, once measured
        code TEXT                               -- JSON: [{at, commit, dirty}] of every launch (the code that trained)
    );
    CREATE TABLE experiment_runs (
        run_id INTEGER PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
        experiment_id TEXT NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
        cell TEXT NOT NULL                      -- which cell of the grid the run stands for
    );
    CREATE INDEX experiment_runs_by_cell ON experiment_runs (experiment_id, cell);
    -- experiments that earlier versions logged as events: kept, with their spec as it was
    INSERT OR IGNORE INTO experiments (id, owner, spec, created_at)
        SELECT json_extract(message, '$.id'), coalesce(json_extract(message, '$.owner'), 'unknown'),
               json_extract(message, '$.spec'), at
        FROM events
        WHERE run_id IS NULL AND kind = 'experiment' AND json_valid(message)
          AND json_extract(message, '$.id') IS NOT NULL AND json_extract(message, '$.spec') IS NOT NULL
        ORDER BY id;
    """,
    # Lecture pace (asymviz.pace): held runs, each run's pace, its latest network snapshot, and
    # the lab's settings (e.g. the lesson pinned as start page).
    """
    ALTER TABLE runs ADD COLUMN held INTEGER NOT NULL DEFAULT 0;   -- 1: queued, but no worker takes it
    CREATE TABLE pace (
        run_id INTEGER PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
        paused INTEGER NOT NULL DEFAULT 0,      -- 1: no further step until Play or Step
        speed REAL NOT NULL DEFAULT 0,          -- steps per second, 0 = full speed
        budget INTEGER NOT NULL DEFAULT 0,      -- steps a paused run may still take (Step)
        to_epoch_end INTEGER NOT NULL DEFAULT 0,  -- 1: a paused run goes on to its epoch's end
        holding INTEGER,                        -- the step after which its worker holds it (NULL: training)
        updated_at REAL NOT NULL
    );
    CREATE TABLE snapshots (
        run_id INTEGER PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        epoch INTEGER,
        data TEXT NOT NULL                      -- JSON, see asymviz.snapshot
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL                     -- JSON
    );
    """,
]


class StoreError(AsymvizError):
    """The run store cannot be opened or used (unwritable path, locked too long, corrupt)."""


class StoreReplaced(StoreError):
    """The store's file was deleted or replaced at its path while this Store had it open."""


def store_advice(path: str | os.PathLike, error: BaseException | None = None) -> str | None:
    """What to do about a run store at `path` that fails to read or write (a clause for a log
    line); None for an error that is no StoreError or whose sentence says it (StoreReplaced)."""
    if error is not None and (not isinstance(error, StoreError) or isinstance(error, StoreReplaced)):
        return None
    name = Path(path).name
    return (f"check that {Path(path).parent} and its files {name}, {name}-wal and {name}-shm can be "
            "written (not read-only, not immutable: `lsattr`, `chattr -i`) and that the disk has free space")


class RunNotFound(AsymvizError):
    """No run has this id (never created, or deleted)."""

    def __init__(self, run_id: int):
        self.run_id = run_id
        super().__init__(f"Run {run_id} does not exist.")

    def __reduce__(self):  # pickles across processes with its run id, not its message
        return (type(self), (self.run_id,))


class RunStateError(AsymvizError):
    """A status change that the run's lifecycle does not allow, or an unknown status."""


def default_path() -> Path:
    """`$ASYMVIZ_HOME/asymviz.db`; ASYMVIZ_HOME defaults to `~/.asymviz` (`lab.home`)."""
    return home() / "asymviz.db"


def check_transition(run_id: int, old: str, new: str) -> None:
    """Raise RunStateError unless a run in status `old` may move to `new`."""
    if new not in STATUSES:
        raise RunStateError(f"Unknown run status {new!r}; expected one of {', '.join(STATUSES)}.")
    if new != old and new not in TRANSITIONS.get(old, ()):
        raise RunStateError(f"Run {run_id} is {old}, so it cannot become {new}.")


class Store:
    """One SQLite file of runs. `Store()` opens the default path, `Store(":memory:")` a
    throwaway one; the file is created and migrated to the current schema on open."""

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            path = default_path()
        self.path = path if path == ":memory:" else str(Path(path).expanduser())
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._pid = os.getpid()
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._writable: tuple[str, ...] = ()  # of -shm, -wal and the file: those writable when opened
        self._open()

    # -- connection ---------------------------------------------------------------------

    def _open(self) -> None:
        file = os.path.abspath(self.path) if self.path != ":memory:" else None
        if file is not None and _OPEN_FILES.get(file) and os.path.lexists(file + "-shm") \
                and not os.access(file + "-shm", os.W_OK):
            # Another Store of this process maps the -shm file writable; SQLite would share that map.
            raise StoreError(f"Cannot open the run store at {self.path}: its file {file}-shm became "
                             f"read-only or immutable while it was open; {store_advice(file)}.")
        try:
            if self.path != ":memory:":
                folder = Path(self.path).parent
                if folder.exists() and not folder.is_dir():
                    raise NotADirectoryError(f"{folder} is a file, not a directory")
                folder.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"Cannot open the run store at {self.path}: {_reason(exc)}.") from exc
        conn.row_factory = sqlite3.Row
        self._conn = conn
        try:
            with self._guard():
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchall())
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.execute("PRAGMA foreign_keys = ON")
                self._migrate()
        except StoreError as exc:
            conn.close()
            self._conn = None
            raise StoreError(f"Cannot open the run store at {self.path}: "
                             f"{_reason(exc.__cause__ or exc)}.") from exc
        if file is not None:
            self._file = file  # what SQLite opened, whatever the cwd later
            _OPEN_FILES[file] = _OPEN_FILES.get(file, 0) + 1
            try:
                info = os.stat(file)
            except OSError:
                return
            self._identity = (info.st_dev, info.st_ino)
            self._writable = tuple(file + s for s in ("-shm", "-wal", "") if os.access(file + s, os.W_OK))

    def file_problem(self) -> str | None:
        """Why this Store must not touch its file any more, as one sentence; None when all is well
        (see `_file_error`)."""
        error = self._file_error()
        return None if error is None else str(error)

    def _file_error(self) -> StoreError | None:
        """The path no longer names the file that was opened (deleted, or replaced by another
        file: StoreReplaced), or the -shm file that could be written when it was opened cannot be
        written now (made read-only or immutable: SQLite would die of SIGBUS writing through its
        memory map), nor the -wal file or the file itself (`chattr -R +i` reaches them one at a
        time: the failure can come before the -shm file's turn); None when neither."""
        if self._identity is None:
            return None
        try:
            info = os.stat(self._file)
            same = (info.st_dev, info.st_ino) == self._identity
        except FileNotFoundError:
            same = False
        except OSError:
            same = True  # cannot look (a folder without search permission): SQLite will say
        if not same:
            return StoreReplaced(
                f"The run store file {self.path} was deleted or replaced while this process had it open, "
                "so runs can be neither shown nor recorded here; restart the lab (every asymviz process) "
                "so that it opens the file now at that path (a deleted file cannot be recovered: restore "
                "a backup with the lab stopped).")
        for path in self._writable:
            if not os.access(path, os.W_OK) and os.path.lexists(path):
                return StoreError(f"The run store at {self.path} cannot be used: its file {path} became "
                                  f"read-only or immutable while it was open; {store_advice(self._file)}.")
        return None

    def _migrate(self) -> None:
        """Apply the MIGRATIONS this file has not seen yet, all in one transaction."""
        if self._schema_version() >= len(MIGRATIONS):
            self._check_not_newer()
            return
        with self._transaction() as db:
            current = self._schema_version()  # again: another process may have just migrated
            for version in range(current + 1, len(MIGRATIONS) + 1):
                for statement in _statements(MIGRATIONS[version - 1]):
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                           (version, time.time()))

    def _schema_version(self) -> int:
        db = self._db()
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone():
            return 0
        return db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]

    def _check_not_newer(self) -> None:
        version = self._schema_version()
        if version > len(MIGRATIONS):
            raise StoreError(f"schema version {version} is newer than this asymviz understands "
                             f"({len(MIGRATIONS)}); upgrade asymviz")

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        with self._guard():
            return self._schema_version()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"The run store at {self.path} is closed.")
        return self._conn

    def _reopen_in_child(self) -> None:
        """This Store was carried into a forked child: SQLite connections must not cross a
        fork, so open a fresh one (and a fresh lock: the parent's may have been held)."""
        _FORK_ORPHANS.append(self._conn)  # never use, nor close, the parent's connection here
        self._pid, self._lock, self._conn = os.getpid(), threading.RLock(), None
        if not self._closed:
            self._open()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                error = self._file_error()
                if error is not None and not isinstance(error, StoreReplaced):
                    _HELD_OPEN.append(self._conn)  # closing writes the -shm file: SIGBUS while immutable
                else:
                    self._conn.close()
                    if self.path != ":memory:" and _OPEN_FILES.get(self._file, 0) > 0:
                        _OPEN_FILES[self._file] -= 1
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    # -- transactions and errors --------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Hold the lock; refuse a file pulled from under us (`file_problem`); turn SQLite errors
        (not integrity ones) into a StoreError."""
        if self._pid != os.getpid():
            self._reopen_in_child()
        with self._lock:
            error = self._file_error()
            if error is not None:
                raise error
            try:
                yield
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                if _is_busy(exc):
                    raise StoreError(f"The run store at {self.path} stayed locked by other "
                                     "processes for too long; try again.") from exc
                cause = self._file_error()  # pulled from under us during this very operation: say so
                if cause is not None:
                    raise cause from exc
                raise StoreError(f"The run store at {self.path} failed: {_reason(exc)}.") from exc

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """`with self._transaction() as db:` one transaction, committed on success.

        A write transaction starts with BEGIN IMMEDIATE (takes the write lock up front, so it
        can never deadlock on an upgrade); a read one is a consistent snapshot."""
        with self._guard():
            db = self._db()
            begin = "BEGIN IMMEDIATE" if write else "BEGIN"
            self._retry(lambda: db.execute(begin))
            try:
                yield db
                self._retry(lambda: db.execute("COMMIT"))
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _retry(self, fn: Callable[[], Any]) -> Any:
        """Call fn; if SQLite says busy/locked even after its busy timeout, back off and retry."""
        for attempt in range(WRITE_RETRIES + 1):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == WRITE_RETRIES:
                    raise
            time.sleep(min(1.0, 0.05 * 2**attempt) * (0.5 + random.random()))

    def _query(self, sql: str, params: Sequence = ()) -> list[dict]:
        with self._guard():
            db = self._db()
            return [dict(row) for row in self._retry(lambda: db.execute(sql, params).fetchall())]

    # -- runs ---------------------------------------------------------------------------

    def create_run(self, config: dict, owner: str, tag: str | None = None,
                   admit: Callable[[int, int], None] | None = None, held: bool = False) -> int:
        """Queue a new run; return its id.

        admit(active, mine): called inside the write transaction with the queued + running runs
        of everyone and of owner (experiment cells not counted: an experiment is admitted as a
        whole, see create_experiment_runs); an exception from it refuses the run (nothing is written).
        held: queued but taken by no worker until released (asymviz.pace.release)."""
        config_json = _config_json(config)
        with self._transaction() as db:
            if admit is not None:
                single = "status IN ('queued', 'running') AND id NOT IN (SELECT run_id FROM experiment_runs)"
                active = db.execute(f"SELECT count(*) FROM runs WHERE {single}").fetchone()[0]
                mine = db.execute(f"SELECT count(*) FROM runs WHERE {single} AND owner = ?", (owner,)).fetchone()[0]
                admit(active, mine)
            cur = db.execute(
                "INSERT INTO runs (created_at, owner, config, status, tag) VALUES (?, ?, ?, ?, ?)",
                (time.time(), owner, config_json, "queued", tag))
            if held:
                db.execute("UPDATE runs SET held = 1 WHERE id = ?", (cur.lastrowid,))
            return cur.lastrowid

    def claim_next(self, worker_pid: int, worker_host: str) -> dict | None:
        """Atomically take a queued run that is not held for this worker (now `running`), fair
        across owners; None if none.

        Fair across owners: the oldest queued run of the owner with the fewest running runs (ties:
        the oldest), so one person's queued experiment grid does not hold up everyone else's runs.
        One UPDATE ... RETURNING under the write lock: two processes never take the same run."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                """UPDATE runs SET status = 'running', started_at = ?, heartbeat_at = ?,
                                   worker_pid = ?, worker_host = ?
                   WHERE id = (SELECT q.id FROM (SELECT owner, min(id) AS id FROM runs
                                                 WHERE status = 'queued' AND held = 0
                                                 GROUP BY owner) q
                               ORDER BY (SELECT count(*) FROM runs r
                                         WHERE r.status = 'running' AND r.owner = q.owner), q.id
                               LIMIT 1)
                     AND status = 'queued'
                   RETURNING *""",
                (now, now, worker_pid, worker_host)).fetchall()
        return _run_dict(row[0]) if row else None

    def get_run(self, run_id: int) -> dict:
        """The run as a dict (config and summary decoded); RunNotFound if there is none."""
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFound(run_id)
        return _run_dict(rows[0])

    def list_runs(self, status: str | Iterable[str] | None = None, owner: str | None = None,
                  tag: str | None = None, dataset: str | None = None,
                  strategy: str | None = None, limit: int | None = None) -> list[dict]:
        """Runs newest first, filtered by any of: status (one or several), owner, tag, and the
        config's dataset / strategy (a name, or a dict with a "name")."""
        where, params = [], []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += statuses
        for column, value in (("owner", owner), ("tag", tag)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        for key, value in (("dataset", dataset), ("strategy", strategy)):
            if value is not None:
                where.append(f"coalesce(json_extract(config, '$.{key}.name'), "
                             f"json_extract(config, '$.{key}')) = ?")
                params.append(value)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [_run_dict(row) for row in self._query(sql, params)]

    def set_status(self, run_id: int, status: str, error: str | None = None,
                   summary: dict | None = None) -> None:
        """Move a run to `status` (checked against TRANSITIONS). Terminal statuses set
        finished_at; error and summary are written when given."""
        summary_json = None if summary is None else _dumps(summary)
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(run_id)
            check_transition(run_id, row["status"], status)
            db.execute(
                """UPDATE runs SET status = ?, error = coalesce(?, error),
                                   summary = coalesce(?, summary),
                                   started_at = CASE WHEN ? = 'running'
                                                THEN coalesce(started_at, ?) ELSE started_at END,
                                   finished_at = CASE WHEN ? THEN coalesce(finished_at, ?)
                                                 ELSE finished_at END
                   WHERE id = ?""",
                (status, error, summary_json, status, now, status in TERMINAL, now, run_id))

    def heartbeat(self, run_id: int, progress: float | None = None) -> None:
        """Record that the run's worker is alive (and, optionally, its progress 0..1)."""
        with self._transaction() as db:
            cur = db.execute("UPDATE runs SET heartbeat_at = ?, progress = coalesce(?, progress) "
                             "WHERE id = ?", (time.time(), progress, run_id))
            if cur.rowcount == 0:
                raise RunNotFound(run_id)

    def request_stop(self, run_id: int) -> None:
        """Ask a run to stop. A queued run is stopped at once; a running one is flagged and
        its worker stops at its next check; a finished one is left as it is."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(run_id)
            if row["status"] == "queued":
                db.execute("UPDATE runs SET status = 'stopped', stop_requested = 1, "
                           "finished_at = ? WHERE id = ?", (now, run_id))
            elif row["status"] == "running":
                db.execute("UPDATE runs SET stop_requested = 1 WHERE id = ?", (run_id,))

    def stop_requested(self, run_id: int) -> bool:
        """Whether the worker of this run should stop: a stop was requested, or the run is no
        longer running (marked interrupted by reconcile, or deleted)."""
        rows = self._query("SELECT status, stop_requested FROM runs WHERE id = ?", (run_id,))
        return not rows or bool(rows[0]["stop_requested"]) or rows[0]["status"] in TERMINAL

    def delete_run(self, run_id: int, force: bool = False) -> None:
        """Delete a run with its steps, epochs, masks and events. A running run is refused
        unless force=True (its worker then finds the run gone and stops)."""
        with self._transaction() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(run_id)
            if row["status"] == "running" and not force:
                raise RunStateError(f"Run {run_id} is running; stop it before deleting it.")
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def count(self, statuses: Iterable[str] = ("queued", "running"),
              owner: str | None = None) -> int:
        """How many runs are in these statuses (for one owner if given)."""
        statuses = list(statuses)
        sql = f"SELECT count(*) AS n FROM runs WHERE status IN ({', '.join('?' * len(statuses))})"
        params = statuses
        if owner is not None:
            sql += " AND owner = ?"
            params = statuses + [owner]
        return self._query(sql, params)[0]["n"]

    def counts_by_owner(self, statuses: Iterable[str] = ("queued", "running")) -> dict[str, int]:
        """{owner: number of runs in these statuses}; owners with none are absent."""
        statuses = list(statuses)
        rows = self._query(f"SELECT owner, count(*) AS n FROM runs WHERE status IN "
                           f"({', '.join('?' * len(statuses))}) GROUP BY owner", statuses)
        return {row["owner"]: row["n"] for row in rows}

    def reconcile(self, is_alive: Callable[[int, str], bool] | None = None,
                  stale_after: float | None = 30.0) -> list[int]:
        """Mark `running` runs whose worker is gone as `interrupted`; return their ids.

        A worker is gone when is_alive(pid, host) says so (default: `lab.pid_alive`: a worker on
        this host that has exited or is a zombie is gone; workers on other hosts count as alive) or when its heartbeat is
        older than stale_after seconds (None: do not judge by heartbeat). Metrics are kept."""
        is_alive = is_alive or pid_alive
        now = time.time()
        running = self._query("SELECT id, worker_pid, worker_host, started_at, heartbeat_at "
                              "FROM runs WHERE status = 'running'")
        verdicts = []  # (run_id, sentence, extra SQL condition that must still hold, params)
        for run in running:
            pid, host = run["worker_pid"], run["worker_host"] or ""
            last = run["heartbeat_at"] or run["started_at"] or 0.0
            if pid is not None and not is_alive(pid, host):
                verdicts.append((run["id"], f"The run was interrupted: its worker process "
                                 f"(pid {pid} on {host or 'an unknown host'}) is gone.",
                                 "worker_pid = ?", (pid,)))
            elif stale_after is not None and now - last > stale_after:
                verdicts.append((run["id"], f"The run was interrupted: its worker sent no "
                                 f"heartbeat for {now - last:.0f} s.",
                                 "coalesce(heartbeat_at, started_at, 0) <= ?", (last,)))
        interrupted = []
        with self._transaction() as db:
            for run_id, sentence, condition, params in verdicts:
                cur = db.execute(  # re-check: the run may have finished or beaten in between
                    f"UPDATE runs SET status = 'interrupted', error = ?, finished_at = ? "
                    f"WHERE id = ? AND status = 'running' AND {condition}",
                    (sentence, now, run_id, *params))
                if cur.rowcount:
                    interrupted.append(run_id)
                    db.execute("INSERT INTO events (run_id, at, kind, message) VALUES (?, ?, ?, ?)",
                               (run_id, now, "interrupted", sentence))
        return interrupted

    # -- owners -------------------------------------------------------------------------
    # Rows of the `owners` table; the rules (names, PINs, the key derivation, how long a name is
    # locked after wrong PINs) are asymviz.owners'.

    def owner_claim(self, key: str) -> dict | None:
        """The claim of a name (by its key), or None if nobody claimed it."""
        rows = self._query("SELECT * FROM owners WHERE key = ?", (key,))
        return rows[0] if rows else None

    def owner_claims(self) -> list[dict]:
        """Every claim, by name (salts and hashes included: not for display)."""
        return self._query("SELECT * FROM owners ORDER BY key")

    def add_owner_claim(self, key: str, name: str, kdf: str, salt: bytes, pin_hash: bytes) -> bool:
        """Claim a name nobody has; False (nothing written) if it is taken."""
        now = time.time()
        with self._transaction() as db:
            return db.execute("INSERT OR IGNORE INTO owners (key, name, kdf, salt, pin_hash, claimed_at, "
                              "pin_set_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (key, name, kdf, salt, pin_hash, now, now)).rowcount == 1

    def set_owner_pin(self, key: str, name: str, kdf: str, salt: bytes, pin_hash: bytes) -> None:
        """Give a name a new PIN (claiming it if nobody has) and clear its failed attempts; a
        claimed name keeps the spelling it was claimed with."""
        now = time.time()
        with self._transaction() as db:
            db.execute("""INSERT INTO owners (key, name, kdf, salt, pin_hash, claimed_at, pin_set_at)
                          VALUES (?, ?, ?, ?, ?, ?, ?)
                          ON CONFLICT (key) DO UPDATE SET kdf = excluded.kdf, salt = excluded.salt,
                              pin_hash = excluded.pin_hash, pin_set_at = excluded.pin_set_at,
                              failures = 0, locked_until = NULL""",
                       (key, name, kdf, salt, pin_hash, now, now))

    def count_pin_attempt(self, key: str, locked_for: Callable[[int], float]) -> tuple[float, dict | None]:
        """Count one PIN attempt on a name, atomically, before its PIN is checked:
        (seconds to wait, None) while the name is locked (nothing counted); else (0, the claim)
        with the attempt counted and the name locked for locked_for(attempts) seconds from now
        (0: not locked). A right PIN then calls clear_pin_failures. None: no such claim."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT * FROM owners WHERE key = ?", (key,)).fetchone()
            if row is None:
                return 0.0, None
            if row["locked_until"] is not None and row["locked_until"] > now:
                return row["locked_until"] - now, None
            failures = row["failures"] + 1
            lock = locked_for(failures)
            db.execute("UPDATE owners SET failures = ?, locked_until = ? WHERE key = ?",
                       (failures, now + lock if lock > 0 else None, key))
            return 0.0, {**dict(row), "failures": failures}

    def clear_pin_failures(self, key: str, salt: bytes) -> None:
        """A right PIN was entered for this claim (still with this salt): forget the attempts."""
        with self._transaction() as db:
            db.execute("UPDATE owners SET failures = 0, locked_until = NULL WHERE key = ? AND salt = ?",
                       (key, salt))

    # -- metrics ------------------------------------------------------------------------

    def writer(self, run_id: int, flush_every: int = 200,
               flush_seconds: float = 0.5) -> MetricWriter:
        """A batched MetricWriter for this run (RunNotFound if there is no such run)."""
        self.get_run(run_id)
        return MetricWriter(self, run_id, flush_every=flush_every, flush_seconds=flush_seconds)

    def steps(self, run_id: int, since_step: int | None = None,
              every: int | None = None) -> list[dict]:
        """The run's step records in step order (flat dicts with `step` and `epoch`).
        since_step: only steps after it (live polling); every: only steps divisible by it."""
        sql, params = "SELECT step, epoch, data FROM steps WHERE run_id = ?", [run_id]
        if since_step is not None:
            sql += " AND step > ?"
            params.append(since_step)
        if every is not None and every > 1:
            sql += " AND step % ? = 0"
            params.append(int(every))
        return [_metric_dict(row, "step") for row in self._query(sql + " ORDER BY step", params)]

    def steps_downsampled(self, run_id: int, max_points: int) -> list[dict]:
        """At most max_points step records spread evenly over the whole run, the first and
        the last included. The choice is made in SQL: only the chosen rows are read."""
        condition, spread = _spread(max_points)
        sql = f"""WITH numbered AS (
                      SELECT step, row_number() OVER (ORDER BY step) - 1 AS rn,
                             count(*) OVER () AS n
                      FROM steps WHERE run_id = ?)
                  SELECT s.step, s.epoch, s.data
                  FROM numbered JOIN steps s ON s.run_id = ? AND s.step = numbered.step
                  WHERE {condition} ORDER BY s.step"""
        rows = self._query(sql, (run_id, run_id, *spread))
        return [_metric_dict(row, "step") for row in rows]

    def epochs(self, run_id: int, since_epoch: int | None = None) -> list[dict]:
        """The run's epoch records in epoch order (flat dicts with `epoch`).
        since_epoch: only epochs after it (live polling)."""
        sql, params = "SELECT epoch, data FROM epochs WHERE run_id = ?", [run_id]
        if since_epoch is not None:
            sql += " AND epoch > ?"
            params.append(since_epoch)
        return [_metric_dict(row, "epoch") for row in self._query(sql + " ORDER BY epoch", params)]

    def masks(self, run_id: int, layer: int | None = None, max_steps: int | None = None,
              with_conn: bool = True, since_step: int | None = None) -> list[dict]:
        """Mask records {step, layer, n, kept: [indices], conn: bytes | None} by step, layer.
        max_steps: keep the records of at most that many steps, spread evenly over the run;
        since_step: only the records of steps after it (live polling; not with max_steps)."""
        if since_step is not None and max_steps is not None:
            raise ValueError("masks() takes since_step or max_steps, not both.")
        layer_sql, layer_params = ("AND layer = ?", (layer,)) if layer is not None else ("", ())
        columns = "step, layer, n, kept" + (", conn" if with_conn else "")
        if max_steps is None:
            since_sql, since_params = ("AND step > ?", (since_step,)) if since_step is not None else ("", ())
            sql = f"SELECT {columns} FROM masks WHERE run_id = ? {layer_sql} {since_sql} ORDER BY step, layer"
            params: tuple = (run_id, *layer_params, *since_params)
        else:
            condition, spread = _spread(max_steps)
            sql = f"""WITH numbered AS (
                          SELECT step, row_number() OVER (ORDER BY step) - 1 AS rn,
                                 count(*) OVER () AS n
                          FROM (SELECT DISTINCT step FROM masks WHERE run_id = ? {layer_sql}))
                      SELECT {columns} FROM masks JOIN (
                          SELECT step FROM numbered WHERE {condition}) USING (step)
                      WHERE run_id = ? {layer_sql} ORDER BY step, layer"""
            params = (run_id, *layer_params, *spread, run_id, *layer_params)
        out = []
        for row in self._query(sql, params):
            row["kept"] = _decode_kept(row["kept"])
            out.append(row)
        return out

    def layer_selection_counts(self, run_id: int, layer: int) -> tuple[list[int], int]:
        """(counts, n_records): counts[i] is how many mask records of this layer kept neuron i.
        Streams the rows: one record in memory at a time."""
        counts: list[int] = []
        n_records = 0
        with self._guard():
            cursor = self._retry(lambda: self._db().execute(
                "SELECT n, kept FROM masks WHERE run_id = ? AND layer = ?", (run_id, layer)))
            for n, kept in cursor:
                if n > len(counts):
                    counts.extend([0] * (n - len(counts)))
                for i in _decode_kept(kept):
                    counts[i] += 1
                n_records += 1
        return counts, n_records

    # -- artifacts ----------------------------------------------------------------------

    def add_artifact(self, run_id: int, kind: str, data: Any, step: int | None = None,
                     epoch: int | None = None) -> int:
        """Store one JSON-able record of a run under `kind` (e.g. a decision grid); its id."""
        try:
            with self._transaction() as db:
                return db.execute("INSERT INTO artifacts (run_id, step, epoch, kind, data) "
                                  "VALUES (?, ?, ?, ?, ?)",
                                  (run_id, step, epoch, kind, _dumps(data))).lastrowid
        except sqlite3.IntegrityError as exc:
            raise RunNotFound(run_id) from exc

    def artifacts(self, run_id: int, kind: str | None, last_only: bool = False) -> list[dict]:
        """The run's artifacts of `kind` (None: every kind) oldest first, as dicts
        {id, step, epoch, kind, data (decoded)}; last_only: only the newest (a list of <= 1)."""
        sql, params = "SELECT id, step, epoch, kind, data FROM artifacts WHERE run_id = ?", [run_id]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        sql += " ORDER BY id DESC LIMIT 1" if last_only else " ORDER BY id"
        rows = self._query(sql, params)
        for row in rows:
            row["data"] = json.loads(row["data"])
        return rows

    # -- experiments --------------------------------------------------------------------

    def add_experiment(self, experiment_id: str, owner: str, spec: dict) -> bool:
        """Record an experiment (once: False if the id exists already)."""
        with self._transaction() as db:
            cur = db.execute("INSERT OR IGNORE INTO experiments (id, owner, spec, created_at) VALUES (?, ?, ?, ?)",
                             (experiment_id, owner, _config_json(spec), time.time()))
            return cur.rowcount == 1

    def experiments(self, experiment_id: str | None = None) -> list[dict]:
        """Experiments newest first (or the one with this id: a list of <= 1), as dicts
        {id, owner, spec (decoded JSON), created_at, launched_at, launched_by, stopped_at, speed, code}."""
        sql, params = "SELECT * FROM experiments", []
        if experiment_id is not None:
            sql += " WHERE id = ?"
            params.append(experiment_id)
        rows = self._query(sql + " ORDER BY created_at DESC, id", params)
        for row in rows:
            row["spec"] = json.loads(row["spec"]) if row["spec"] else None
            row["speed"] = json.loads(row["speed"]) if row["speed"] else None
            row["code"] = json.loads(row["code"]) if row["code"] else []
        return rows

    def update_experiment(self, experiment_id: str, **fields: Any) -> None:
        """Set launched_at, launched_by, stopped_at, speed and/or code (JSON-able) of an experiment."""
        allowed = {"launched_at", "launched_by", "stopped_at", "speed", "code"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"update_experiment sets {', '.join(sorted(allowed))}; got {', '.join(fields)}")
        values = [_dumps(v) if k in ("speed", "code") and v is not None else v for k, v in fields.items()]
        with self._transaction() as db:
            db.execute(f"UPDATE experiments SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                       (*values, experiment_id))

    def create_experiment_runs(self, experiment_id: str, owner: str, cells: Sequence[tuple[str, dict]]) -> list[int]:
        """Queue one run per (cell, config) of an experiment that needs one, in one transaction
        (tagged with the experiment id); the new run ids. A cell needs a run unless it has one
        that is queued, running, finished or diverged, or one that ended otherwise (failed,
        stopped, interrupted) after the experiment's latest launch; nothing is queued while the
        experiment is stopped. Checked inside the write transaction, so two processes advancing
        the same experiment never queue a cell twice. The queue limits on single runs do not
        count these runs (the experiment is admitted as a whole)."""
        rows = [(cell, _config_json(config)) for cell, config in cells]
        ids: list[int] = []
        with self._transaction() as db:
            exp = db.execute("SELECT launched_at, stopped_at FROM experiments WHERE id = ?",
                             (experiment_id,)).fetchone()
            if exp is None:
                raise ValueError(f"no experiment {experiment_id!r} in this store")
            launched = exp["launched_at"] or 0.0
            if exp["stopped_at"] is not None and exp["stopped_at"] >= launched:
                return ids
            covered = {row["cell"] for row in db.execute(
                "SELECT experiment_runs.cell AS cell FROM experiment_runs JOIN runs ON runs.id = experiment_runs.run_id "
                "WHERE experiment_runs.experiment_id = ? AND (runs.status IN ('queued', 'running', 'finished', "
                "'diverged') OR runs.created_at >= ?)", (experiment_id, launched))}
            now = time.time()
            for cell, config_json in rows:
                if cell in covered:
                    continue
                covered.add(cell)
                run_id = db.execute("INSERT INTO runs (created_at, owner, config, status, tag) VALUES (?, ?, ?, ?, ?)",
                                    (now, owner, config_json, "queued", experiment_id)).lastrowid
                db.execute("INSERT INTO experiment_runs (run_id, experiment_id, cell) VALUES (?, ?, ?)",
                           (run_id, experiment_id, cell))
                ids.append(run_id)
        return ids

    def experiment_runs(self, experiment_id: str) -> list[dict]:
        """The runs of an experiment newest first, each with its `cell`."""
        rows = self._query("SELECT runs.*, experiment_runs.cell AS cell FROM runs JOIN experiment_runs "
                           "ON experiment_runs.run_id = runs.id WHERE experiment_runs.experiment_id = ? "
                           "ORDER BY runs.id DESC", (experiment_id,))
        return [_run_dict(row) for row in rows]

    # -- events -------------------------------------------------------------------------

    def add_event(self, run_id: int | None, kind: str, message: str) -> int:
        """Log one event (run_id None: about the server); return its id."""
        try:
            with self._transaction() as db:
                return db.execute("INSERT INTO events (run_id, at, kind, message) "
                                  "VALUES (?, ?, ?, ?)",
                                  (run_id, time.time(), kind, message)).lastrowid
        except sqlite3.IntegrityError as exc:
            raise RunNotFound(run_id) from exc

    def events(self, run_id: int | None = None, limit: int | None = 100) -> list[dict]:
        """Events newest first, of one run or (run_id None) of all."""
        sql, params = "SELECT id, run_id, at, kind, message FROM events", []
        if run_id is not None:
            sql += " WHERE run_id = ?"
            params.append(run_id)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._query(sql, params)

    # -- export -------------------------------------------------------------------------

    def export_run(self, run_id: int) -> dict:
        """{"run", "steps", "epochs", "events" (oldest first)}: everything but the masks,
        read as one consistent snapshot, ready for json.dump."""
        with self._transaction(write=False):
            return {"run": self.get_run(run_id), "steps": self.steps(run_id),
                    "epochs": self.epochs(run_id),
                    "events": self.events(run_id, limit=None)[::-1]}

    def to_csv_rows(self, run_id: int) -> tuple[list[str], list[dict]]:
        """(fieldnames, rows) of one flat table for csv.DictWriter: a row per step record
        (kind "step") then per epoch record (kind "epoch"); absent metrics are missing keys."""
        with self._transaction(write=False):
            self.get_run(run_id)
            rows = [{"kind": "step", **r} for r in self.steps(run_id)]
            rows += [{"kind": "epoch", **r} for r in self.epochs(run_id)]
        metrics = sorted({key for row in rows for key in row} - {"kind", "step", "epoch"})
        return ["kind", "step", "epoch", *metrics], rows


class MetricWriter:
    """Buffers a run's step / epoch / mask / artifact records and writes them in one
    transaction per flush (executemany), so recording costs little against training.

    A flush happens when flush_every records are buffered, when an add comes flush_seconds
    after the last flush (a live view then sees points about every second), on flush(),
    and on close(). Each flush also refreshes the run's heartbeat. If the run was deleted
    meanwhile, flush raises RunNotFound (the worker should stop)."""

    def __init__(self, store: Store, run_id: int, flush_every: int = 200,
                 flush_seconds: float = 0.5):
        self.store, self.run_id = store, run_id
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._steps: list[tuple] = []
        self._epochs: list[tuple] = []
        self._masks: list[tuple] = []
        self._artifacts: list[tuple] = []
        self._progress: float | None = None
        self._next_step = 0
        self._next_epoch = 0
        self._last_flush = time.monotonic()

    def add_step(self, record: dict) -> None:
        """One step's flat metric dict; `step` (and `epoch`) are taken from it. A record with
        no `step` gets the one after the last step this writer saw."""
        data = dict(record)
        step = int(data.pop("step", self._next_step))
        epoch = data.pop("epoch", None)
        self._next_step = step + 1
        self._steps.append((self.run_id, step, epoch, _dumps(data)))
        self._maybe_flush()

    def add_epoch(self, record: dict) -> None:
        """One epoch's flat metric dict; `epoch` is taken from it (or counted, if absent)."""
        data = dict(record)
        epoch = int(data.pop("epoch", self._next_epoch))
        self._next_epoch = epoch + 1
        self._epochs.append((self.run_id, epoch, _dumps(data)))
        self._maybe_flush()

    def add_mask(self, step: int, layer: int, kept_indices: Sequence[int], n: int,
                 conn: bytes | None = None) -> None:
        """The neurons of `layer` (width n) kept at `step`, and optionally a connection mask
        (any bytes; pack_mask makes them from a 2-D boolean array)."""
        self._masks.append((self.run_id, int(step), int(layer), int(n),
                            _encode_kept(kept_indices, int(n)), conn))
        self._maybe_flush()

    def add_artifact(self, kind: str, data: Any, step: int | None = None,
                     epoch: int | None = None) -> None:
        """A JSON-able record of `kind` (see Store.add_artifact), written with the next flush."""
        self._artifacts.append((self.run_id, step, epoch, kind, _dumps(data)))
        self._maybe_flush()

    def set_progress(self, progress: float) -> None:
        """Progress 0..1, written with the next flush."""
        self._progress = float(progress)

    def _maybe_flush(self) -> None:
        buffered = len(self._steps) + len(self._epochs) + len(self._masks) + len(self._artifacts)
        if buffered >= self.flush_every or \
                time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered and the heartbeat in one transaction."""
        try:
            with self.store._transaction() as db:
                cur = db.execute("UPDATE runs SET heartbeat_at = ?, "
                                 "progress = coalesce(?, progress) WHERE id = ?",
                                 (time.time(), self._progress, self.run_id))
                if cur.rowcount == 0:
                    raise RunNotFound(self.run_id)
                db.executemany("INSERT OR REPLACE INTO steps (run_id, step, epoch, data) "
                               "VALUES (?, ?, ?, ?)", self._steps)
                db.executemany("INSERT OR REPLACE INTO epochs (run_id, epoch, data) "
                               "VALUES (?, ?, ?)", self._epochs)
                db.executemany("INSERT OR REPLACE INTO masks (run_id, step, layer, n, kept, conn)"
                               " VALUES (?, ?, ?, ?, ?, ?)", self._masks)
                db.executemany("INSERT INTO artifacts (run_id, step, epoch, kind, data) "
                               "VALUES (?, ?, ?, ?, ?)", self._artifacts)
        except sqlite3.IntegrityError as exc:
            raise RunNotFound(self.run_id) from exc
        self._steps, self._epochs, self._masks, self._artifacts = [], [], [], []  # once committed
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush what is left."""
        self.flush()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None or not issubclass(exc_type, RunNotFound):
            self.close()


# -- connection masks -----------------------------------------------------------------------

def pack_mask(mask) -> bytes:
    """A 2-D boolean mask (numpy array, CPU tensor, nested lists) as compact bytes:
    rows and cols as two little-endian uint32, then the bits row-major (np.packbits, little)."""
    import numpy as np

    a = np.asarray(mask, dtype=bool)
    if a.ndim != 2:
        raise ValueError(f"A connection mask must be 2-D; got shape {a.shape}.")
    return struct.pack("<II", *a.shape) + np.packbits(a, axis=None, bitorder="little").tobytes()


def unpack_mask(blob: bytes):
    """The boolean numpy array that pack_mask packed."""
    import numpy as np

    rows, cols = struct.unpack_from("<II", blob)
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8, offset=8), count=rows * cols,
                         bitorder="little")
    return bits.reshape(rows, cols).astype(bool)


# -- helpers --------------------------------------------------------------------------------

_FORK_ORPHANS: list = []  # connections inherited through fork (see Store._reopen_in_child)
_OPEN_FILES: dict[str, int] = {}  # absolute store path -> Stores of this process that have it open
_HELD_OPEN: list = []  # connections not closed because their -shm file became immutable (Store.close)

# Kept neuron indices are stored sorted, as whichever is smaller: a tag byte then either
# little-endian uint16 / uint32 indices (b"H" / b"I") or a bitset of n bits (b"B", bit i of
# byte i // 8 is neuron 8 * (i // 8) + i % 8).
_BITS = [tuple(b for b in range(8) if byte >> b & 1) for byte in range(256)]


def _encode_kept(kept: Sequence[int], n: int) -> bytes:
    if hasattr(kept, "tolist"):  # numpy array or tensor
        kept = kept.tolist()
    indices = sorted({int(i) for i in kept})
    if indices and not (0 <= indices[0] and indices[-1] < n):
        raise ValueError(f"Kept neuron indices must lie in 0..{n - 1}; got {indices[0]}.."
                         f"{indices[-1]}.")
    code = "H" if n <= 1 << 16 else "I"
    itemsize = array(code).itemsize
    if (n + 7) // 8 < itemsize * len(indices):
        bits = bytearray((n + 7) // 8)
        for i in indices:
            bits[i >> 3] |= 1 << (i & 7)
        return b"B" + bytes(bits)
    packed = array(code, indices)
    if sys.byteorder == "big":
        packed.byteswap()
    return code.encode() + packed.tobytes()


def _decode_kept(blob: bytes) -> list[int]:
    tag, body = blob[:1], blob[1:]
    if tag == b"B":
        return [8 * i + bit for i, byte in enumerate(body) if byte for bit in _BITS[byte]]
    packed = array(tag.decode())
    packed.frombytes(body)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tolist()


def _spread(max_points: int) -> tuple[str, tuple]:
    """SQL condition on rn (0-based row number) and n (row count) that keeps at most
    max_points rows evenly spread, first and last included: rows floor(i (n-1) / (m-1))."""
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1; got {max_points}.")
    if max_points == 1:
        return "rn = n - 1", ()
    m1 = max_points - 1
    return "(n <= ? OR ((rn * ? + n - 2) / (n - 1)) * (n - 1) / ? = rn)", (max_points, m1, m1)


def _statements(script: str) -> list[str]:
    """Split a migration script into single statements (executescript would commit)."""
    statements, current = [], ""
    for piece in script.split(";"):  # a ";" inside a string, comment or trigger is not an end
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \t\n;"):
                statements.append(current.strip())
            current = ""
    return statements


def _config_json(config) -> str:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    try:
        return json.dumps(config, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"The run config cannot be stored as JSON: {_reason(exc)}.") from exc


def _json_default(value):
    if hasattr(value, "item"):  # numpy / torch scalar
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value) -> str:
    # Metrics may be NaN or infinite (a diverged run): Python's JSON writes and reads them back.
    return json.dumps(value, default=_json_default)


def _run_dict(row) -> dict:
    run = dict(row)
    run["config"] = json.loads(run["config"])
    run["summary"] = None if run["summary"] is None else json.loads(run["summary"])
    run["stop_requested"] = bool(run["stop_requested"])
    return run


def _metric_dict(row: dict, key: str) -> dict:
    record = {key: row[key]}
    if key == "step" and row["epoch"] is not None:
        record["epoch"] = row["epoch"]
    record.update(json.loads(row["data"]))
    return record


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _reason(exc: BaseException) -> str:
    """The cause as a clause: 'No such file or directory: /x', 'database is locked'."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc).rstrip(".")
