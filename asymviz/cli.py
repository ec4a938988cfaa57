"""The asymviz command line.

    python -m asymviz train --dataset digits --hidden 256,256 --strategy neuron --sparsity 0.9 --json
    python -m asymviz --help

Every subcommand turns bad input into one sentence on stderr and exit status 2 (never a
traceback); set ASYMVIZ_DEBUG=1 to see tracebacks of unexpected errors. Output cut short by its
reader (`runs show 3 | head`) ends the command quietly with status 141, as SIGPIPE would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback

from asymviz.errors import AsymvizError, ConfigError


class CliError(AsymvizError):
    """Bad command-line input (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as one sentence and exit 2 (its own convention)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}; see --help.\n")


# ----------------------------------------------------------------------------- train flags

def add_train_flags(p: argparse.ArgumentParser) -> None:
    """Flags that describe a run (shared by `train` and `submit`): one per TrainConfig field, named,
    described and checked by asymviz.config.TRAIN_FIELDS; the dataset's options come as
    --data-option KEY=VALUE, or --csv FILE with --label."""
    from asymviz.config import TRAIN_FIELDS

    p.add_argument("--config", metavar="FILE", help="start from a run config saved as JSON; flags override it")
    for field in TRAIN_FIELDS.values():
        if field.name == "dataset_options":
            p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                           help="dataset loader option, e.g. noise=0.3 or n_samples=500 (repeatable)")
            p.add_argument("--csv", metavar="PATH", help="train on a CSV file: numeric features plus --label column")
            p.add_argument("--label", help="label column of --csv")
        elif field.type in (bool, "bool"):
            p.add_argument(field.flag, dest=field.name, action=argparse.BooleanOptionalAction,
                           help=field.help.replace("%", "%%"))
        else:
            p.add_argument(field.flag, dest=field.name, help=field.help.replace("%", "%%"))


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CliError(f"--data-option must look like KEY=VALUE, got {text!r}.")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def config_from_args(args: argparse.Namespace):
    """A validated TrainConfig from train flags (and an optional --config file); a refused flag
    value is its field's one sentence (asymviz.config)."""
    from asymviz.config import TRAIN_FIELDS
    from asymviz.train import TrainConfig

    base = TrainConfig()
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                base = TrainConfig.from_json(f.read())
        except OSError as e:
            raise CliError(f"Cannot read the config file {args.config}: {e.strerror}.") from None
    changes = {name: field.read(getattr(args, name)) for name, field in TRAIN_FIELDS.items()
               if name not in ("dataset_options", "hidden") and getattr(args, name) is not None}
    options = dict(base.dataset_options) if "dataset" not in changes else {}
    options.update(dict(_parse_option(o) for o in args.data_option))
    if args.csv:
        if not args.label:
            raise CliError("--csv needs --label COLUMN naming the label column.")
        changes["dataset"] = "csv"
        options.update(path=os.path.abspath(args.csv), label=args.label)
    changes["dataset_options"] = options
    if args.hidden is not None:
        changes["hidden"] = _hidden(args.hidden, changes.get("dataset", base.dataset), options,
                                    changes.get("split_seed", base.split_seed))
    import dataclasses
    return dataclasses.replace(base, **changes).validated()


def _hidden(spec: str, dataset: str, options: dict, split_seed: int) -> list[int]:
    """Hidden widths; a full 'in-...-out' spec is checked against the dataset's sizes."""
    from asymviz.config import widths
    from asymviz.model import parse_architecture

    hidden = widths(spec)  # one sentence if malformed, before any data is loaded
    text = spec.replace(" ", "")
    if "-" in text and "," not in text:
        from asymviz.data import load_dataset

        data = load_dataset(dataset, options, split_seed=split_seed, local_files=True)
        return parse_architecture(text, data.n_features, data.n_classes)
    return hidden


# ----------------------------------------------------------------------------- train

def _fmt(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def cmd_train(args: argparse.Namespace) -> int:
    from asymviz.train import Callback, fit

    config = config_from_args(args)

    class Progress(Callback):
        def on_fit_start(self, ctx):
            d = ctx.data
            print(f"{config.dataset}: {len(d.x_train)} train / {len(d.x_val)} val / {len(d.x_test)} test, "
                  f"{d.n_features} features, {d.n_classes} classes; {config.strategy} on "
                  f"{'-'.join(map(str, [d.n_features, *config.hidden, d.n_classes]))}, device {ctx.device}",
                  file=sys.stderr)

        def on_epoch_end(self, ctx, r):
            print(f"epoch {r['epoch']:>3}/{config.epochs}  train loss {r['train/loss']:.4f} acc {r['train/acc']:.4f}  "
                  f"val loss {r['val/loss']:.4f} acc {r['val/acc']:.4f}  gap {r['gap']:+.4f}  "
                  f"{r['time/epoch_s']:.2f} s", file=sys.stderr, flush=True)

    try:
        result = fit(config, [Progress()], local_files=True)  # --csv FILE: the local user's file
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        print(f"status {result['status']}  test acc {_fmt(result['test_acc'])}  val acc {_fmt(result['val_acc'])}  "
              f"train acc {_fmt(result['train_acc'])}  gap {_fmt(result['gap'], '+.4f')}  "
              f"backward {_fmt(result['backward_ms_mean'], '.3f')} ms/step  step {_fmt(result['step_ms_mean'], '.3f')} ms")
    if result["status"] == "diverged":
        print("The run diverged (the loss became NaN or infinite); try a smaller --lr.", file=sys.stderr)
        return 1
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from asymviz.data import list_datasets

    for info in list_datasets():
        print(f"{info.name:<14} {info.kind:<9} {info.description}")
    return 0


# ----------------------------------------------------------------------------- bench

def cmd_bench(args: argparse.Namespace) -> int:
    """Dense vs sparse backward and step timings (asymviz.bench), as a table or JSON."""
    import torch

    from asymviz import config
    from asymviz.bench import backward_table, format_table
    from asymviz.model import parse_architecture
    from asymviz.strategies import STRATEGIES

    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    if args.width is not None or args.depth is not None:
        if args.hidden is not None:
            raise CliError("give either --hidden or --width/--depth, not both.")
        widths = parse_architecture([args.width or 2048] * (args.depth if args.depth is not None else 2))
    else:
        widths = parse_architecture(args.hidden or "2048,2048")
    # lists as everywhere (asymviz.config): commas, semicolons or spaces; kept in the order given
    batches = config.integers(args.batch, "batch", 1, 65536, canonical=False)
    sparsities = config.sparsities(args.sparsity, canonical=False)
    strategies = config.names(args.strategy, "strategies", tuple(STRATEGIES), "strategy")
    if args.nn_linear:
        from asymviz.bench import symmetric_overhead

        results = [symmetric_overhead(widths, batch=b, n_in=args.n_in, n_out=args.n_out, optimizer=args.optimizer,
                                      device=args.device, repeats=args.repeats, warmup=args.warmup, seed=args.seed,
                                      clock=args.clock)
                   for b in batches]
        if args.json:
            print(json.dumps(results))
        for r in results if not args.json else []:
            print(f"symmetric AsymmetricLinear vs nn.Linear, {args.n_in}-{'-'.join(map(str, widths))}-{args.n_out}, "
                  f"batch {r['batch']}: backward {r['asym_backward_ms']:.2f} vs {r['nn_backward_ms']:.2f} ms "
                  f"({r['backward_overhead']:+.1%}), step {r['asym_step_ms']:.2f} vs {r['nn_step_ms']:.2f} ms "
                  f"({r['step_overhead']:+.1%})")
        return 0
    rows = []
    for strategy in strategies:
        for batch in batches:
            part = backward_table(widths, batch=batch, sparsities=sparsities, strategy=strategy,
                                  conn_sparsity=args.conn_sparsity, granularity=args.granularity,
                                  n_in=args.n_in, n_out=args.n_out, optimizer=args.optimizer,
                                  device=args.device, repeats=args.repeats, warmup=args.warmup, seed=args.seed,
                                  path=args.path, clock=args.clock)
            rows += part
            if not args.json:
                print(f"{args.n_in}-{'-'.join(map(str, widths))}-{args.n_out}, batch {batch}, {args.granularity}, "
                      f"{args.optimizer}, {part[0]['device']}, {torch.get_num_threads()} threads, "
                      f"median of {args.repeats}, {args.clock} clock; CPU hot loops: {part[0]['kernels']}", flush=True)
                print(format_table(part) + "\n", flush=True)
    if args.json:
        print(json.dumps(rows))
    return 0


def cmd_kernels(args: argparse.Namespace) -> int:
    """Build (if needed) and load the compiled CPU kernels; say which implementation runs."""
    from asymviz import fast
    from asymviz.fast import kernels

    lib = kernels.library()
    print(f"asymviz CPU kernels: {kernels.status()}")
    if not fast.enabled():
        print("ASYMVIZ_FAST=0: the sparse backward and the optimizer take the plain path, without the kernels.")
    if lib is None:
        print("Training and benchmarks still work, with PyTorch ops for these loops (slower lazy optimizer "
              "update); install a C compiler (e.g. apt-get install gcc) to build the kernels.", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------- background runs

def _add_store_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="PATH", help="the run store file (default $ASYMVIZ_HOME/asymviz.db)")


def _open_store(args: argparse.Namespace):
    from asymviz.store import Store

    return Store(args.store)


def cmd_submit(args: argparse.Namespace) -> int:
    """Queue a run for the worker pool; print its id."""
    from asymviz.jobs import Runner

    config = _uploaded(config_from_args(args))
    run_id = Runner(args.store).submit(config, owner=args.owner, tag=args.tag)
    print(run_id)
    print(f"queued run {run_id}; a worker pool (`python -m asymviz worker`, or the dashboard's) "
          f"trains it; see `python -m asymviz runs show {run_id}`.", file=sys.stderr)
    return 0


def _uploaded(config):
    """A queued run never names a file path (workers load only the lab's uploads): a local
    `--csv FILE` is checked and copied into $ASYMVIZ_HOME/uploads first, and named by its id."""
    import dataclasses

    from asymviz.data import load_dataset, store_upload

    options = dict(config.dataset_options or {})
    if config.dataset != "csv" or "path" not in options:
        return config
    load_dataset("csv", options, local_files=True)  # one sentence if unreadable or malformed
    with open(options["path"], "rb") as f:
        upload_id = store_upload(f.read(), options["label"])
    return dataclasses.replace(config, dataset_options={"upload": upload_id, "label": options["label"]})


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _report_runs(store, seen: dict[int, str]) -> None:
    """Print a line for each run that started or ended since the last call (worker log)."""
    running = {run["id"]: run for run in store.list_runs(status="running")}
    for run_id in sorted(set(seen) | set(running)):
        run = running.get(run_id)
        if run is None:
            from asymviz.store import RunNotFound
            try:
                run = store.get_run(run_id)
            except RunNotFound:
                seen.pop(run_id)
                continue
        if seen.get(run_id) != run["status"]:
            config = run["config"]
            detail = f"{config.get('dataset')}, {config.get('strategy')}, pid {run['worker_pid']}"
            if run["status"] == "finished" and run["summary"]:
                detail = f"test acc {_fmt(run['summary'].get('test_acc'))}"
            elif run["error"]:
                detail = run["error"]
            print(f"run {run_id} {run['status']} ({detail})", file=sys.stderr, flush=True)
        if run["status"] == "running":
            seen[run_id] = "running"
        else:
            seen.pop(run_id, None)


def _pool_text(runner) -> str:
    """What trains this runner's runs, for the log: '4 worker process(es)' or the Ray cluster."""
    if runner.executor == "ray":
        return f"the ray executor (up to {runner.workers} runs at once on the Ray cluster)"
    return f"{runner.workers} worker process(es)"


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker pool in the foreground until Ctrl-C or SIGTERM."""
    import signal
    import time

    from asymviz.jobs import Runner
    from asymviz.lab import Trouble, log_fatal_signals
    from asymviz.store import StoreError, store_advice

    runner = Runner(args.store, workers=args.workers)
    if runner.workers < 1:
        raise CliError(f"--workers must be at least 1, got {runner.workers}.")
    log_fatal_signals()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    # SIGINT stops the pool as Ctrl-C does, as `serve` handles it, also where this process was
    # started with SIGINT ignored (a shell script's background job inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    seen: dict[int, str] = {}
    trouble = Trouble("worker pool")
    try:
        runner.start(force=True)  # even where ASYMVIZ_EXTERNAL_WORKERS=1 tells servers not to
        print(f"asymviz worker: {_pool_text(runner)} on {runner.store.path}; "
              "Ctrl-C stops.", file=sys.stderr, flush=True)
        pause = 1.0
        while True:
            time.sleep(pause)
            try:
                _report_runs(runner.store, seen)
                trouble.recovered()
                pause = 1.0
            except StoreError as exc:  # logged once; the pool goes on (its supervisor retries too)
                pause = max(1.0, trouble.failed(exc, store_advice(runner.store.path, exc)))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping: running runs end interrupted ...", file=sys.stderr, flush=True)
    finally:
        runner.shutdown(grace=args.grace)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _report_runs(runner.store, seen)
    except StoreError as exc:
        print(f"asymviz worker: {exc}", file=sys.stderr)
    print("asymviz worker: stopped.", file=sys.stderr)
    return 0


def _sparsity_text(config: dict) -> str:
    if config.get("strategy") in ("symmetric", "dropout"):
        return "-"
    text = _fmt(config.get("sparsity"), "g")
    return text + (f"/{config['conn_sparsity']:g}" if config.get("conn_sparsity") else "")


def _epochs_text(run: dict) -> str:
    total = run["config"].get("epochs")
    done = (run["summary"] or {}).get("epochs")
    if done is None:
        done = int((run["progress"] or 0) * (total or 0))
    return f"{done}/{total}"


def _time_text(at: float | None) -> str:
    import time

    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


def cmd_runs_list(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        runs = store.list_runs(status=args.status, owner=args.owner, limit=args.limit)
    if args.json:
        print(json.dumps(runs))
        return 0
    if not runs:
        print("No runs.", file=sys.stderr)
        return 0
    header = ("id", "status", "owner", "dataset", "strategy", "sparsity", "epochs", "test acc", "created")
    rows = [(str(r["id"]), r["status"], r["owner"], str(r["config"].get("dataset")),
             str(r["config"].get("strategy")), _sparsity_text(r["config"]), _epochs_text(r),
             _fmt((r["summary"] or {}).get("test_acc")), _time_text(r["created_at"])) for r in runs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        run = store.get_run(args.id)
        epochs = store.epochs(args.id)
        events = store.events(args.id, limit=None)[::-1]
    last_epoch = epochs[-1] if epochs else None
    if args.json:
        print(json.dumps({"run": run, "last_epoch": last_epoch, "events": events}))
        return 0
    print(f"run {run['id']}  {run['status']}  owner {run['owner']}  tag {run['tag'] or '-'}  "
          f"progress {100 * (run['progress'] or 0):.0f} %")
    print(f"created {_time_text(run['created_at'])}  started {_time_text(run['started_at'])}  "
          f"ended {_time_text(run['finished_at'])}")
    if run["error"]:
        print(f"error: {run['error']}")
    sections = [("config", run["config"]),
                ("summary", {k: v for k, v in (run["summary"] or {}).items() if k != "config"}),
                ("last epoch", last_epoch or {})]
    for title, values in sections:
        print(f"{title}:")
        for key, value in values.items():
            shown = _fmt(value, ".4g") if isinstance(value, float) else json.dumps(value)
            print(f"  {key:<22} {shown}")
    return 0


def cmd_runs_stop(args: argparse.Namespace) -> int:
    from asymviz.jobs import Runner
    from asymviz.owners import ADMIN

    runner = Runner(args.store, workers=0)
    before = runner.status(args.id)["status"]
    runner.stop(args.id, owner=ADMIN)  # the machine's own user: an administrator
    if before in ("queued", "running"):
        print(f"Stop requested for run {args.id} (it was {before}).")
    else:
        print(f"Run {args.id} is already {before}; nothing to stop.")
    return 0


def cmd_runs_delete(args: argparse.Namespace) -> int:
    from asymviz.jobs import Runner
    from asymviz.owners import ADMIN

    runner = Runner(args.store, workers=0)
    if runner.status(args.id)["status"] == "running":
        raise CliError(f"Run {args.id} is running; stop it first with "
                       f"`python -m asymviz runs stop {args.id}`, then delete it.")
    runner.delete(args.id, owner=ADMIN)
    print(f"Deleted run {args.id}.")
    return 0


def _open_out(path: str):
    """A text file to write (or stdout for '-'); an unwritable path is one sentence."""
    if path == "-":
        return contextlib.nullcontext(sys.stdout)
    try:
        return open(path, "w", encoding="utf-8", newline="")
    except OSError as e:
        raise CliError(f"Cannot write {path}: {e.strerror or e}.") from None


def _export_tensorboard(store, run_id: int, out: str) -> int:
    """Scalars per step (`step/<metric>`) and per epoch (`epoch/<metric>`, x = its step)."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise CliError("TensorBoard export needs the tensorboard package, which is not installed; "
                       "install it with `pip install tensorboard`, or export with --format csv or json.")
    run = store.get_run(run_id)
    try:
        os.makedirs(out, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise CliError(f"Cannot write TensorBoard files to {out}: {e.strerror or e}.") from None
    from torch.utils.tensorboard import SummaryWriter

    count = 0
    writer = SummaryWriter(log_dir=out)
    try:
        writer.add_text("config", "    " + json.dumps(run["config"], indent=1).replace("\n", "\n    "))
        for kind, records, x in (("step", store.steps(run_id), "step"), ("epoch", store.epochs(run_id), "epoch")):
            for record in records:
                at = record.get("step", record[x])
                for key, value in record.items():
                    if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                        writer.add_scalar(f"{kind}/{key}", value, global_step=at)
                        count += 1
    finally:
        writer.close()
    return count


def cmd_runs_export(args: argparse.Namespace) -> int:
    import csv

    with _open_store(args) as store:
        store.get_run(args.id)  # an unknown id before anything is written
        if args.format == "tensorboard":
            count = _export_tensorboard(store, args.id, args.out)
            print(f"Wrote {count} scalars of run {args.id} to {args.out}; view them with "
                  f"`tensorboard --logdir {args.out}`.", file=sys.stderr)
            return 0
        if args.format == "csv":
            fieldnames, rows = store.to_csv_rows(args.id)
            with _open_out(args.out) as f:
                writer = csv.DictWriter(f, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)
        else:
            export = store.export_run(args.id)
            with _open_out(args.out) as f:
                json.dump(export, f)
                f.write("\n")
    if args.out != "-":
        print(f"Wrote run {args.id} as {args.format} to {args.out}.", file=sys.stderr)
    return 0


def _add_run_commands(sub) -> None:
    """`submit`, `worker` and `runs ...`: the background runner (asymviz.jobs) from the shell."""
    p = sub.add_parser("submit", help="queue a run for the worker pool and print its id")
    add_train_flags(p)
    p.add_argument("--owner", default="cli", help="who the run belongs to (default cli)")
    p.add_argument("--tag", help="a free-form group name, e.g. an experiment id")
    _add_store_flag(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("worker", help="run a worker pool in the foreground until Ctrl-C")
    p.add_argument("--workers", type=int, help="worker processes (default $ASYMVIZ_WORKERS or one per core)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds running runs get to stop at shutdown before their workers are killed")
    _add_store_flag(p)
    p.set_defaults(func=cmd_worker)

    runs = sub.add_parser("runs", help="list, show, stop, delete and export stored runs")
    verbs = runs.add_subparsers(dest="runs_command", metavar="ACTION", parser_class=_Parser)
    verbs.required = True
    p = verbs.add_parser("list", help="the runs, newest first")
    p.add_argument("--status", help="only runs in this status")
    p.add_argument("--owner", help="only runs of this owner")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="print one JSON list of run records")
    p.set_defaults(func=cmd_runs_list)
    p = verbs.add_parser("show", help="one run's config, summary and last epoch")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_runs_show)
    p = verbs.add_parser("stop", help="ask a queued or running run to stop")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_runs_stop)
    p = verbs.add_parser("delete", help="delete a run and its metrics")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_runs_delete)
    p = verbs.add_parser("export", help="write a run's metrics as CSV, JSON or TensorBoard events")
    p.add_argument("id", type=int)
    p.add_argument("--format", required=True, choices=("csv", "json", "tensorboard"))
    p.add_argument("--out", required=True, metavar="PATH",
                   help="file to write ('-' for stdout); a directory for tensorboard")
    p.set_defaults(func=cmd_runs_export)
    for p in verbs.choices.values():
        _add_store_flag(p)


# ----------------------------------------------------------------------------- owners

def cmd_owners_list(args: argparse.Namespace) -> int:
    from asymviz import owners

    with _open_store(args) as store:
        for row in owners.claims(store):
            locked = row["locked_until"] and row["locked_until"] > time.time()
            print(f"{row['name']:<40} claimed {_when(row['claimed_at'])}  "
                  f"{row['failures']} wrong PIN(s) in a row{'  LOCKED' if locked else ''}")
    return 0


def cmd_owners_set_pin(args: argparse.Namespace) -> int:
    """The machine's own user gives a name a new PIN (a lab without an instructor password)."""
    import getpass

    from asymviz import owners

    pin = args.pin if args.pin is not None else getpass.getpass(f"New PIN for {args.name}: ")
    with _open_store(args) as store:
        name = owners.set_pin(store, args.name, pin)
    print(f"{name} has a new PIN; sessions signed in with the old one no longer act as {name}.",
          file=sys.stderr)
    return 0


def _when(ts) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _add_owner_commands(sub) -> None:
    owners = sub.add_parser("owners", help="the names claimed in the dashboard, and new PINs for them")
    verbs = owners.add_subparsers(dest="owners_command", metavar="ACTION", parser_class=_Parser)
    verbs.required = True
    p = verbs.add_parser("list", help="claimed names, with wrong PIN attempts and locks")
    p.set_defaults(func=cmd_owners_list)
    p = verbs.add_parser("set-pin", help="give a name a new PIN (asked for when --pin is not given)")
    p.add_argument("name")
    p.add_argument("--pin", help="the new PIN (4 to 32 characters); prefer the prompt, which is not logged")
    p.set_defaults(func=cmd_owners_set_pin)
    for p in verbs.choices.values():
        _add_store_flag(p)


# ----------------------------------------------------------------------------- serve

def cmd_serve(args: argparse.Namespace) -> int:
    """The lab's one process tree: the worker pool in this process, the Streamlit server as its
    child (told by ASYMVIZ_EXTERNAL_WORKERS=1 to start no pool of its own). SIGTERM or Ctrl-C
    stops the server, then the pool: running runs end `interrupted`, never left `running`.
    Killed outright (SIGKILL), it takes its children along: the Streamlit server is started with
    `lab.die_with_parent`, and the workers end their run and exit when their parent is gone.
    A failing store or pool status file is logged once and retried; it never ends the server."""
    import signal
    import subprocess
    import time
    from pathlib import Path

    from asymviz import lab, owners, policy
    from asymviz.jobs import Runner
    from asymviz.lab import Trouble, log_fatal_signals
    from asymviz.store import StoreError, store_advice

    log_fatal_signals()
    signals: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: signals.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    app = Path(__file__).resolve().parent.parent / "app.py"
    runner = server = None
    seen: dict[int, str] = {}
    try:
        policy.offered_datasets()  # a bad ASYMVIZ_DATASETS stops here, before anything starts
        owners.auth_mode()
        runner = Runner(workers=args.workers)
        runner.start(force=True)
        lab.write_pool_status(runner)
        print(f"asymviz serve: {_pool_text(runner)} on {runner.store.path}; the dashboard "
              f"on http://{args.address}:{args.port}; SIGTERM or Ctrl-C stops both.", file=sys.stderr, flush=True)
        from asymviz.fast import kernels
        print(f"asymviz serve: CPU kernels: {kernels.status()}", file=sys.stderr, flush=True)
        server = subprocess.Popen(
            lab.die_with_parent(["-m", "streamlit", "run", str(app), "--server.port", str(args.port),
                                 "--server.address", args.address, "--server.headless", "true",
                                 "--server.fileWatcherType", "none"]),  # serving: no reload on edits
            cwd=app.parent, env={**os.environ, "ASYMVIZ_EXTERNAL_WORKERS": "1"})
        pool_file, store_log = Trouble("serve (pool status file)"), Trouble("serve")
        pool_retry = store_retry = 0.0  # no try before these times (monotonic): back-off
        while not signals and server.poll() is None:
            try:
                server.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now >= pool_retry:
                try:
                    lab.write_pool_status(runner)  # workers the supervisor replaced get new pids
                    pool_file.recovered()
                except OSError as exc:
                    pool_retry = now + pool_file.failed(exc, f"check that {lab.home()} can be written")
            if now >= store_retry:
                try:
                    _report_runs(runner.store, seen)
                    store_log.recovered()
                except StoreError as exc:
                    store_retry = now + store_log.failed(exc, store_advice(runner.store.path, exc))
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second signal must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if signals:
            print(f"asymviz serve: {signal.Signals(signals[0]).name}: stopping the dashboard, then the "
                  "workers (running runs end interrupted) ...", file=sys.stderr, flush=True)
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if runner is not None:
            runner.shutdown(grace=args.grace)
            try:
                lab.clear_pool_status()
                _report_runs(runner.store, seen)
            except (OSError, StoreError) as exc:
                print(f"asymviz serve: {exc}", file=sys.stderr, flush=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not signals:
        print(f"asymviz serve: the Streamlit server exited with code {server.returncode}; the workers "
              "were stopped.", file=sys.stderr)
        return server.returncode or 1
    print("asymviz serve: stopped.", file=sys.stderr)
    return 0


def _add_serve_command(sub) -> None:
    p = sub.add_parser("serve", help="run the dashboard and its worker pool as one process tree (the lab image)",
                       description="Start the worker pool, then `streamlit run app.py` as a child process; "
                                   "SIGTERM or Ctrl-C stops both, and running runs end interrupted.")
    p.add_argument("--port", type=int, default=8501, help="the dashboard's port (default 8501)")
    p.add_argument("--address", default="127.0.0.1",
                   help="the address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--workers", type=int, help="worker processes (default $ASYMVIZ_WORKERS or one per core)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds running runs get to stop at shutdown before their workers are killed")
    p.set_defaults(func=cmd_serve)


# ----------------------------------------------------------------------------- experiment
#
# The experiment's grid flags come from one declaration, asymviz.experiment.spec.FIELDS (the
# dashboard's form and the spec's validation use it too); the flags below it are about running.

def _experiment_spec(args: argparse.Namespace):
    """The validated ExperimentSpec of a preset (or the defaults) overridden by the grid flags."""
    from asymviz import experiment as ex

    base = (ex.preset(args.preset) if args.preset else ex.ExperimentSpec()).to_dict()
    for f in ex.FIELDS:
        value = getattr(args, f.name, None)
        if value is not None:
            base[f.name] = value
    return ex.ExperimentSpec.from_dict(base).validated()


def _experiment_runner(args: argparse.Namespace):
    """The runner whose worker pool trains the cells (none with --report-only or external workers)."""
    from asymviz.jobs import Runner
    from asymviz.policy import Limits

    from asymviz.lab import external_workers

    external = external_workers()
    limits = Limits.from_env()
    limits.max_runs_per_owner = 0  # a private pool: no per-person limit on experiments
    runner = Runner(args.store, workers=0 if external or args.report_only else args.workers, limits=limits,
                    executor=args.executor)
    if not (external or args.report_only) and runner.workers < 1:
        raise CliError(f"--workers must be at least 1, got {runner.workers}.")
    runner.external = external
    return runner


def _train_cells(spec, runner, args, say) -> str:
    """Launch (or resume) the experiment and keep advancing it until no training is left;
    the experiment id. Ctrl-C stops it (KeyboardInterrupt, after stopping its runs)."""
    import time

    from asymviz import experiment as ex
    from asymviz.pagekit import format_duration

    exp_id = ex.launch(spec, runner, owner=args.owner)
    store = runner.store
    if not ex.progress(store, exp_id)["complete"]:
        runner.start()  # no pool for a finished experiment
    say(f"{exp_id}: {'external workers' if runner.external else _pool_text(runner)} on "
        f"{store.path}; Ctrl-C stops, and the same command resumes.")
    last_line, last_done = 0.0, -1
    try:
        while True:
            ex.advance(store, exp_id)
            p = ex.progress(store, exp_id)
            now = time.monotonic()
            if p["complete"] or (p["done"] != last_done and now - last_line >= 5) or now - last_line >= 30:
                eta = "" if p["complete"] else f", about {format_duration(p['eta_s'])} left"
                say(f"{exp_id}: {p['done']}/{p['total']} runs done, {p['running']} running, "
                    f"{p['queued'] + p['pending']} queued, {p['waiting']} waiting for their selection, "
                    f"{p['failed']} failed; {format_duration(p['elapsed_s'])} elapsed{eta}")
                last_line, last_done = now, p["done"]
            if p["complete"]:
                return exp_id
            time.sleep(3.0)  # advancing costs the parent a little CPU: not every instant
    except KeyboardInterrupt:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say(f"{exp_id}: stopping ...")
        from asymviz.owners import ADMIN

        ex.stop(runner, exp_id, owner=ADMIN)
        runner.shutdown(grace=5.0)
        p = ex.progress(store, exp_id)
        say(f"{exp_id}: interrupted with {p['done']} of {p['total']} runs done; they stay in the store, so the "
            "same command resumes.")
        raise


def cmd_experiment(args: argparse.Namespace) -> int:
    """Run (or resume) the thesis experiment with a worker pool, then write its report."""
    import signal
    import time

    from asymviz import experiment as ex

    spec = _experiment_spec(args)
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if args.estimate:
        print(ex.estimate_text(spec))
        return 0
    runner = _experiment_runner(args)
    exp_id = ex.experiment_id(spec)
    out = args.out or os.path.join("artifacts", "experiments", exp_id)
    head = {"command": "python -m asymviz experiment " + " ".join(args.argv)} if getattr(args, "argv", None) else {}
    if not args.report_only:
        say(f"{exp_id}: {spec.describe()}")
        head["data"] = ex.prepare_data(spec)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            _train_cells(spec, runner, args, say)
        except KeyboardInterrupt:
            return 130
        finally:
            runner.shutdown(grace=5.0)
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if ex.speed_due(runner.store, exp_id):
            say(f"{exp_id}: training done; measuring the width sweep (claim 3) with the machine to itself ...")
            t0 = time.monotonic()
            ex.measure_speed(runner.store, exp_id, say=lambda text: say(f"{exp_id}: {text}"))
            say(f"{exp_id}: width sweep measured in {time.monotonic() - t0:.0f} s.")
    else:
        ex.experiment_state(runner.store, exp_id)  # ExperimentNotFound: one sentence
        try:
            head["data"] = ex.prepare_data(spec)
        except AsymvizError:
            pass  # the report still says everything else
    paths = ex.write_report(runner.store, exp_id, out, notes=args.note, results=args.results, head=head)
    a = ex.analyze(runner.store, exp_id)
    if args.json:
        print(json.dumps({**json.loads(open(paths["report.json"], encoding="utf-8").read()), "paths": paths}))
    else:
        print("\n".join(ex.report.words(a)))
        print(f"\nReport: {paths['report.md']}, {paths['report.html']} (CSV tables beside them)"
              + (f"; and {paths['results']}" if "results" in paths else "") + ".")
    p = a["progress"]
    if p["stopped"] or not p["complete"]:
        say(f"{exp_id}: the report covers {p['done']} of {p['total']} runs; run without --report-only to "
            "finish the experiment.")
        return 1
    if p["failed"]:
        say(f"{exp_id}: {p['failed']} run(s) failed (see the error column of runs.csv); run the same command "
            "again to retry them.")
        return 1
    return 0


def _add_experiment_command(sub) -> None:
    from asymviz.experiment.spec import FIELDS

    p = sub.add_parser("experiment", help="test the thesis: tune on some seeds, test on others, with verdicts",
                       description="Run the thesis experiment with a worker pool: every arm's setting is chosen on "
                                   "selection seeds by validation, then the chosen settings run on fresh "
                                   "confirmation seeds and only those are tested (paired t-tests with a practical "
                                   "margin per claim, Holm within each claim); then the width sweep of claim 3. "
                                   "Resumes after an interruption; writes a report (Markdown, HTML, CSV).")
    p.add_argument("--preset", help="quick (minutes, embedded data) | standard (what RESULTS.md reports, about "
                                    "90 min on 2 cores) | full (a cluster's worth: see --estimate)")
    grid = p.add_argument_group("the grid (override the preset)")
    for f in FIELDS:
        grid.add_argument(f.flag, dest=f.name, metavar=f.kind.upper(), help=f.help.replace("%", "%%"))
    p.add_argument("--workers", type=int, help="worker processes (default $ASYMVIZ_WORKERS or one per core); "
                                               "ASYMVIZ_EXTERNAL_WORKERS=1 uses a `python -m asymviz worker` pool")
    p.add_argument("--executor", help="where the cells train: local (this machine's worker processes; default "
                                      "$ASYMVIZ_EXECUTOR or local) | ray (the Ray cluster at $RAY_ADDRESS, or a "
                                      "local Ray head; --workers then caps the runs at once)")
    p.add_argument("--owner", default="cli", help="who the runs belong to (default cli)")
    p.add_argument("--out", metavar="DIR", help="report folder (default artifacts/experiments/<experiment id>)")
    p.add_argument("--results", metavar="FILE", help="also write the Markdown report to FILE (e.g. RESULTS.md), "
                                                     "its links pointing at the CSV files in --out")
    p.add_argument("--note", action="append", default=[], metavar="TEXT", help="a line for the report (repeatable)")
    p.add_argument("--report-only", action="store_true", help="write the report of what the store holds; run nothing")
    p.add_argument("--estimate", action="store_true", help="print the grid's runs and an estimate of its CPU time; "
                                                           "run nothing")
    p.add_argument("--json", action="store_true", help="print the report's data as one JSON object")
    _add_store_flag(p)
    p.set_defaults(func=cmd_experiment)


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m asymviz", description="asymviz: asymmetric training of feed-forward networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="train one run in the foreground and print its metrics")
    add_train_flags(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("datasets", help="list the datasets")
    p.set_defaults(func=cmd_datasets)
    p = sub.add_parser("bench", help="time the dense vs the sparse backward and training step")
    p.add_argument("--hidden", help="hidden widths, e.g. 2048,2048 (default)")
    p.add_argument("--width", type=int, help="every hidden layer's width (with --depth)")
    p.add_argument("--depth", type=int, help="number of hidden layers (with --width)")
    p.add_argument("--n-in", type=int, default=784, help="input features (default 784)")
    p.add_argument("--n-out", type=int, default=10, help="output classes (default 10)")
    p.add_argument("--batch", default="128", help="batch size(s), e.g. 64,128 (default 128)")
    p.add_argument("--strategy", default="neuron", help="strategy name(s), e.g. neuron,refined (default neuron)")
    p.add_argument("--sparsity", default="0,0.5,0.9,0.95",
                   help="neuron sparsities, each in [0, 1) (default 0,0.5,0.9,0.95); lists split on commas, "
                        "semicolons or spaces")
    p.add_argument("--conn-sparsity", type=float, default=0.0, help="connection sparsity (excessive, refined)")
    p.add_argument("--granularity", default="batch", help="batch | example")
    p.add_argument("--path", default="auto",
                   help="auto (the fallback rule) | compact | dense: force one backward kernel for every hidden layer")
    p.add_argument("--optimizer", default="adam", help="sgd | momentum | adam")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per variant (median; default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (the reference benchmark uses 2)")
    p.add_argument("--clock", default="wall",
                   help="wall (default) | cpu: process CPU time, steadier on a busy machine (use with --threads 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nn-linear", action="store_true",
                   help="instead: time the symmetric AsymmetricLinear network against plain nn.Linear")
    p.add_argument("--json", action="store_true", help="print all rows as one JSON list")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("kernels", help="build the compiled CPU kernels now and say which implementation runs")
    p.set_defaults(func=cmd_kernels)
    _add_run_commands(sub)
    _add_experiment_command(sub)
    _add_serve_command(sub)
    _add_owner_commands(sub)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv[1:] if argv and argv[0] == args.command else argv  # for the experiment report's header
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (`runs show 2 | head`): stop quietly, as Unix tools do when they
        # die of SIGPIPE, with its exit status; what is left to write goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except (AsymvizError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug, not bad input: one line unless debugging
        if os.environ.get("ASYMVIZ_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e} (set ASYMVIZ_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
