"""Lecture pace: Play, Pause, Step and a speed for runs that train in the background.

    ids = pace.submit(runner, [config], owner="ana", speed=5)   # queued, at 5 steps per second
    pace.pause(store, ids, owner="ana"); pace.step(store, ids, owner="ana"); pace.play(store, ids, owner="ana")
    pace.get(store, ids[0])          # Pace(paused=False, speed=5.0, budget=0, to_epoch_end=False)
    pace.last_step(store, ids[0])    # the last step the run has recorded

A run's pace is a row of the store's `pace` table: the dashboard writes it, the run's worker
reads it through `PaceCallback` (asymviz.executors.execute attaches one next to the StoreCallback):
- speed: at most that many steps per second (0: full speed); the worker waits between steps,
  outside the timed step, so timings stay true.
- paused: the worker holds the run between two steps, after writing out its records and a
  network snapshot, so the page shows exactly where it stands. Step lets exactly one more batch
  through (or the rest of the epoch); Play lets it go on.
- A run paused for longer than ASYMVIZ_PAUSE_YIELD_S seconds (default 60) gives its worker back:
  `fit` ends with a checkpoint (asymviz.checkpoint) in the store's folder, the run goes back to the
  queue `held` (no worker takes it), and on Play or Step a worker takes it and goes on from there,
  bit for bit. A run held before its first step just starts again when released.
- For small networks (asymviz.snapshot.is_small) the worker keeps the run's latest snapshot in
  the `snapshots` table: at every step at slow paces, a few times a second at full speed (within
  SNAPSHOT_SHARE of the run's time), when it pauses, and at the end.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from asymviz import checkpoint
from asymviz.errors import AsymvizError, ConfigError
from asymviz.owners import NotOwner
from asymviz.snapshot import Recorder, is_small
from asymviz.store import RunNotFound, Store
from asymviz.train import Callback, FitContext
from asymviz.environ import env_number

SPEEDS = (1.0, 5.0, 20.0, 0.0)  # the dashboard's choices, steps per second (0: full speed)
TOY_SPEED = 20.0  # the default for the 2-D toy datasets and the "Try it" run
MAX_SPEED = 1000.0
YIELD_VARIABLE = "ASYMVIZ_PAUSE_YIELD_S"
DEFAULT_YIELD_S = 60.0
CHECK_S = 0.2  # at full speed, the worker looks at the pace this often
WAIT_S = 0.1  # a paused worker looks this often
HEARTBEAT_S = 5.0  # ... and tells the store it is alive this often
SNAPSHOT_EVERY_S = 0.25  # at most this often at 20 steps/s, ...
SNAPSHOT_FULL_SPEED_S = 0.5  # ... at full speed, ...
SNAPSHOT_BYTES_PER_S = 100_000  # ... and a big snapshot less often still
SNAPSHOT_SHARE = 0.03  # at full speed, snapshots take at most about this share of the time


class Held(AsymvizError):
    """A run released while paused stayed paused before its first step: back to the queue."""


@dataclass
class Pace:
    paused: bool = False
    speed: float = 0.0  # steps per second, 0: full speed
    budget: int = 0  # steps a paused run may still take
    to_epoch_end: bool = False  # a paused run goes on to its epoch's end
    holding: int | None = None  # the step after which the run's worker holds it (None: not held yet)


def check_speed(value) -> float:
    """A speed in steps per second (0: full speed); ConfigError with one sentence otherwise."""
    try:
        speed = float(value)
    except (TypeError, ValueError):
        speed = float("nan")
    if not 0 <= speed <= MAX_SPEED:
        raise ConfigError(f"The pace must be a number of steps per second from 0 to {MAX_SPEED:g} (0: full "
                          f"speed), got {value!r}.")
    return speed


def yield_seconds() -> float:
    """ASYMVIZ_PAUSE_YIELD_S: how long a paused run keeps its worker (default 60 s)."""
    return env_number(YIELD_VARIABLE, DEFAULT_YIELD_S, 0.0)


# ------------------------------------------------------------------------------ the dashboard's side

def get(store: Store, run_id: int) -> Pace:
    """The run's pace (full speed, playing, when none was set)."""
    rows = store._query("SELECT paused, speed, budget, to_epoch_end, holding FROM pace WHERE run_id = ?", (run_id,))
    if not rows:
        return Pace()
    r = rows[0]
    return Pace(bool(r["paused"]), float(r["speed"]), int(r["budget"]), bool(r["to_epoch_end"]), r["holding"])


def _owned(store: Store, run_ids: Iterable[int], owner: str | None) -> list[int]:
    ids = [int(i) for i in run_ids]
    for run_id in ids:
        run = store.get_run(run_id)
        if owner is not None and run["owner"] != owner:
            raise NotOwner(f"Run {run_id} belongs to {run['owner']}; only its owner can pause, step or play it.")
    return ids


def _update(store: Store, run_ids: list[int], assignments: str, params: tuple = (), release: bool = False) -> None:
    """Upsert the pace rows of run_ids with `assignments` (SQL over the row's columns); release:
    also let their worker take them if they are held in the queue."""
    now = time.time()
    with store._transaction() as db:
        for run_id in run_ids:
            db.execute("INSERT INTO pace (run_id, updated_at) VALUES (?, ?) ON CONFLICT (run_id) DO NOTHING",
                       (run_id, now))
            db.execute(f"UPDATE pace SET {assignments}, updated_at = ? WHERE run_id = ?", (*params, now, run_id))
            if release:
                db.execute("UPDATE runs SET held = 0 WHERE id = ? AND status = 'queued'", (run_id,))


def set_speed(store: Store, run_ids: Iterable[int], speed, owner: str | None = None) -> None:
    """Steps per second (0: full speed), from the next step on."""
    _update(store, _owned(store, run_ids, owner), "speed = ?", (check_speed(speed),))


def pause(store: Store, run_ids: Iterable[int], owner: str | None = None) -> None:
    """Hold the runs after their current step."""
    _update(store, _owned(store, run_ids, owner), "paused = 1, budget = 0, to_epoch_end = 0")


def play(store: Store, run_ids: Iterable[int], owner: str | None = None) -> None:
    """Let the runs go on (a held one is taken by the next free worker)."""
    _update(store, _owned(store, run_ids, owner), "paused = 0, budget = 0, to_epoch_end = 0", release=True)


def step(store: Store, run_ids: Iterable[int], epoch: bool = False, owner: str | None = None) -> None:
    """Pause the runs and let exactly one more step (one batch) through, or (epoch=True) the
    rest of the current epoch."""
    change = "paused = 1, to_epoch_end = 1" if epoch else "paused = 1, budget = budget + 1"
    _update(store, _owned(store, run_ids, owner), change, release=True)


def release(store: Store, run_ids: Iterable[int]) -> None:
    """Let workers take these queued runs."""
    with store._transaction() as db:
        for run_id in run_ids:
            db.execute("UPDATE runs SET held = 0 WHERE id = ? AND status = 'queued'", (int(run_id),))


def is_held(run: dict) -> bool:
    """Whether a run waits in the queue held (paused, its worker given back)."""
    return run.get("status") == "queued" and bool(run.get("held"))


def last_step(store: Store, run_id: int) -> int:
    """The last step the run has recorded (0: none yet); one index lookup."""
    return store._query("SELECT coalesce(max(step), 0) AS s FROM steps WHERE run_id = ?", (run_id,))[0]["s"]


def snapshot(store: Store, run_id: int) -> dict | None:
    """The run's latest network snapshot (asymviz.snapshot), or None."""
    rows = store._query("SELECT data FROM snapshots WHERE run_id = ?", (run_id,))
    return json.loads(rows[0]["data"]) if rows else None


def snapshot_mark(store: Store, run_id: int) -> tuple[int, int | None, int] | None:
    """(step, epoch, size in bytes) of the run's latest snapshot, or None: cheap (no JSON is
    decoded), for cache keys. The size tells apart, in practice, a snapshot written again at the
    same step with other weights (the best epoch's, restored when a run stops early)."""
    rows = store._query("SELECT step, epoch, length(data) AS size FROM snapshots WHERE run_id = ?", (run_id,))
    return (rows[0]["step"], rows[0]["epoch"], rows[0]["size"]) if rows else None


def write_snapshot(store: Store, run_id: int, data: dict) -> int:
    """Replace the run's snapshot; its size in bytes."""
    text = json.dumps(data, separators=(",", ":"))
    with store._transaction() as db:
        db.execute("INSERT OR REPLACE INTO snapshots (run_id, step, epoch, data) VALUES (?, ?, ?, ?)",
                   (run_id, data["step"], data.get("epoch"), text))
    return len(text)


def submit(runner, configs: list[dict], owner: str, speed=0.0, paused: bool = False,
           tag: str | None = None) -> list[int]:
    """Queue runs with a pace, held until all are queued and paced, then released together
    (so twins start side by side and no worker races the pace). If one is refused (a limit),
    the ones already queued are deleted and its error is raised: all or nothing."""
    speed = check_speed(speed)
    ids: list[int] = []
    try:
        for config in configs:
            ids.append(runner.submit(config, owner=owner, tag=tag, held=True))
            _update(runner.store, [ids[-1]], "paused = ?, speed = ?", (int(bool(paused)), speed))
    except BaseException:
        for run_id in ids:
            try:
                runner.store.delete_run(run_id)
            except AsymvizError:
                pass
        raise
    release(runner.store, ids)
    return ids


# ------------------------------------------------------------------------------- the worker's side

def requeue(store: Store, run_id: int) -> None:
    """A run that gave its worker back: queued again, held while it is still paused (stopped
    instead if a stop was asked meanwhile)."""
    now = time.time()
    with store._transaction() as db:
        still_paused = db.execute("SELECT 1 FROM pace WHERE run_id = ? AND paused = 1 AND budget = 0 "
                                  "AND to_epoch_end = 0", (run_id,)).fetchone() is not None
        db.execute("""UPDATE runs SET status = CASE WHEN stop_requested THEN 'stopped' ELSE 'queued' END,
                                      finished_at = CASE WHEN stop_requested THEN ? ELSE finished_at END,
                                      held = ?, worker_pid = NULL, worker_host = NULL, heartbeat_at = NULL
                      WHERE id = ? AND status = 'running'""", (now, int(still_paused), run_id))


def resume_point(store: Store, run: dict) -> dict | None:
    """The checkpoint a run that gave its worker back goes on from, or None to start afresh.
    Only the lab's own file for this very run (its id and creation time) is used."""
    path = checkpoint.path_of(store.path, run["id"])
    if path is None or not path.exists():
        return None
    saved = checkpoint.load(path)
    if saved.get("run") != {"id": run["id"], "created_at": run["created_at"]}:
        path.unlink(missing_ok=True)  # left over from another store's run of the same id
        return None
    return saved


def prune_checkpoints(store: Store) -> None:
    """Delete checkpoint files of runs that are no longer queued or running (a file that cannot
    be deleted now is left for the next time)."""
    live = {r["id"] for r in store.list_runs(status=["queued", "running"])}
    try:
        checkpoint.prune(store.path, keep=live)
    except OSError:
        pass


class PaceCallback(Callback):
    """The worker's side of a run's pace (see the module docstring).

    check_stop(ctx): the StoreCallback's stop check (sets ctx.stop_reason); flush(): writes its
    buffered records. yield_after: seconds paused before giving the worker back (None:
    ASYMVIZ_PAUSE_YIELD_S; never for an in-memory store)."""

    def __init__(self, store: Store, run: dict, check_stop: Callable[[FitContext], None],
                 flush: Callable[[], None], yield_after: float | None = None, snapshots: bool = True):
        self.store, self.run = store, run
        self.run_id = run["id"]
        self.check_stop, self.flush = check_stop, flush
        self.yield_after = yield_seconds() if yield_after is None else yield_after
        if checkpoint.folder_of(store.path) is None:
            self.yield_after = math.inf
        self.snapshots = snapshots
        self.pace = Pace()
        self.recorder: Recorder | None = None
        self.yielded = False
        self._stepped = False  # a step was taken in this fit (a resumed run's model has no kept sets before)
        self._read_at = self._next_slot = self._last_flush = 0.0
        self._snapshot_at = self._snapshot_gap = 0.0
        self._snapshot_seconds = 0.0
        self._t0 = time.perf_counter()

    # -- hooks ------------------------------------------------------------------------

    def on_fit_start(self, ctx: FitContext) -> None:
        self._t0 = time.perf_counter()
        widths = [ctx.data.n_features, *ctx.config.hidden, ctx.data.n_classes]
        if self.snapshots and is_small(widths):
            stored = snapshot(self.store, self.run_id) if ctx.step else None
            same = stored is not None and stored.get("step") == ctx.step
            self.recorder = Recorder(ctx.model, ctx.data, ctx.device,
                                     counts=stored.get("counts") if same else None,
                                     counted=stored.get("counted", 0) if same else 0)
        self._read(force=True)
        if self.pace.paused and not ctx.step:
            self._snapshot(ctx, force=True)  # the untrained network, as the class first sees it
        if not self._gate(ctx):
            raise Held(f"Run {self.run_id} stayed paused; it waits in the queue.")

    def on_step_end(self, ctx: FitContext, record: dict) -> None:
        self._stepped = True
        if self.recorder is not None:
            self.recorder.count()
        self._read()
        self._keep_pace(ctx)
        if self._snapshot_due():
            self._snapshot(ctx)
        if ctx.step % ctx.steps_per_epoch and not ctx.stop_reason:  # an epoch's last step pauses at its end
            if not self._gate(ctx):
                ctx.request_yield()

    def on_epoch_end(self, ctx: FitContext, record: dict) -> None:
        if self.pace.to_epoch_end:
            _update(self.store, [self.run_id], "to_epoch_end = 0")
        self._read(force=True)
        if ctx.epoch < ctx.config.epochs and not ctx.stop_reason and not self._gate(ctx):
            ctx.request_yield()

    def on_fit_end(self, ctx: FitContext, result: dict) -> None:
        path = checkpoint.path_of(self.store.path, self.run_id)
        if result["status"] == "yielded":
            saved = dict(result["checkpoint"], run={"id": self.run_id, "created_at": self.run["created_at"]})
            checkpoint.save(path, saved)
            requeue(self.store, self.run_id)
            self.yielded = True
            try:
                self.store.add_event(self.run_id, "yielded",
                                     f"Paused for {self.yield_after:g} s, so it gave its worker back at step "
                                     f"{ctx.step}; it goes on from there on Play or Step.")
            except RunNotFound:
                pass
            return
        if self.recorder is not None and result["status"] != "diverged":
            self._snapshot(ctx, force=True)
        if path is not None:
            path.unlink(missing_ok=True)

    # -- pace -------------------------------------------------------------------------

    def _read(self, force: bool = False) -> None:
        """Read the pace: every step while paced or paused, else every CHECK_S."""
        now = time.monotonic()
        if force or self.pace.paused or self.pace.speed > 0 or now - self._read_at >= CHECK_S:
            self.pace = get(self.store, self.run_id)
            self._read_at = now

    def _gate(self, ctx: FitContext) -> bool:
        """Let the next step through unless the pace last read says paused; False: paused for
        longer than the yield limit (stopped meanwhile: ctx.stop_reason is set, True returned)."""
        if not self.pace.paused or self._take_step():
            return True
        self.flush()  # the page shows exactly where the run stands
        if self._stepped:
            self._snapshot(ctx, force=True)
        _update(self.store, [self.run_id], "holding = ?", (ctx.step,))  # and that it does stand there
        since = beat = time.monotonic()
        while True:
            time.sleep(WAIT_S)
            self.check_stop(ctx)
            if ctx.stop_reason:
                _update(self.store, [self.run_id], "holding = NULL")
                return True
            self._read(force=True)
            if not self.pace.paused or self._take_step():
                _update(self.store, [self.run_id], "holding = NULL")
                self._next_slot = 0.0
                return True
            now = time.monotonic()
            if now - since >= self.yield_after:
                return False  # still holding at this step, with its worker given back
            if now - beat >= HEARTBEAT_S:
                self.flush()  # refreshes the heartbeat: a paused run is not a dead one
                beat = now

    def _take_step(self) -> bool:
        """A paused run's permission for one more step (Step), used up here."""
        if self.pace.to_epoch_end:
            return True
        if self.pace.budget > 0:
            with self.store._transaction() as db:
                taken = db.execute("UPDATE pace SET budget = budget - 1 WHERE run_id = ? AND budget > 0",
                                   (self.run_id,)).rowcount
            return bool(taken)
        return False

    def _keep_pace(self, ctx: FitContext) -> None:
        """At speed v, wait until 1/v s after the previous step; write records out as they come."""
        speed = self.pace.speed
        if speed <= 0 or self.pace.paused:
            self._next_slot = 0.0
            return
        now = time.monotonic()
        if self._next_slot:
            while now < self._next_slot:
                time.sleep(min(0.1, self._next_slot - now))
                self._read(force=True)
                if self.pace.paused or self.pace.speed != speed:
                    break
                now = time.monotonic()
        self._next_slot = max(self._next_slot, now) + 1.0 / speed if self.pace.speed == speed else 0.0
        if now - self._last_flush >= 0.2:
            self.flush()
            self._last_flush = now

    # -- snapshots ----------------------------------------------------------------------

    def _snapshot_due(self) -> bool:
        if self.recorder is None:
            return False
        now = time.monotonic()
        speed = self.pace.speed
        if 0 < speed <= 5:
            return True
        gap = max(SNAPSHOT_EVERY_S if speed > 0 else SNAPSHOT_FULL_SPEED_S, self._snapshot_gap)
        if now - self._snapshot_at < gap:
            return False
        return speed > 0 or self._snapshot_seconds <= SNAPSHOT_SHARE * (time.perf_counter() - self._t0)

    def _snapshot(self, ctx: FitContext, force: bool = False) -> None:
        if self.recorder is None:
            return
        start = time.perf_counter()
        size = write_snapshot(self.store, self.run_id, self.recorder.capture(ctx.step, ctx.epoch))
        self._snapshot_seconds += time.perf_counter() - start
        self._snapshot_at = time.monotonic()
        self._snapshot_gap = size / SNAPSHOT_BYTES_PER_S
