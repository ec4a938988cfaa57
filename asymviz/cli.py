"""The asymviz command line.

    python -m asymviz train --dataset digits --hidden 256,256 --strategy neuron --sparsity 0.9 --json
    python -m asymviz --help

Every subcommand turns bad input into one sentence on stderr and exit status 2 (never a
traceback); set ASYMVIZ_DEBUG=1 to see tracebacks of unexpected errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
    """Flags that describe a run (shared by `train` and `submit`). Defaults come from TrainConfig."""
    from asymviz.strategies import GRANULARITIES, SELECTIONS, STRATEGIES

    p.add_argument("--config", metavar="FILE", help="start from a run config saved as JSON; flags override it")
    p.add_argument("--dataset", help="dataset name (see `python -m asymviz datasets`); default digits")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset loader option, e.g. noise=0.3 or n_samples=500 (repeatable)")
    p.add_argument("--csv", metavar="PATH", help="train on a CSV file: numeric features plus --label column")
    p.add_argument("--label", help="label column of --csv")
    p.add_argument("--hidden", help="hidden widths '256,256', or a full architecture '64-256-256-10'")
    p.add_argument("--activation", help="relu | tanh | sigmoid | gelu")
    p.add_argument("--strategy", help=" | ".join(STRATEGIES))
    p.add_argument("--sparsity", type=float, help="neuron sparsity s in [0, 1): keep max(1, round((1-s) n))")
    p.add_argument("--conn-sparsity", type=float, help="connection sparsity c in [0, 1) (excessive, refined)")
    p.add_argument("--selection", help=" | ".join(SELECTIONS))
    p.add_argument("--granularity", help=" | ".join(GRANULARITIES))
    p.add_argument("--dropout", type=float, help="forward dropout p (default: 0.5 for the dropout strategy, else 0)")
    p.add_argument("--sparse-output", action="store_const", const=True, help="make the output layer asymmetric too")
    p.add_argument("--optimizer", help="sgd | momentum | adam")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--momentum", type=float, help="momentum of the momentum optimizer")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--update", help="lazy (dropped entries stay frozen; default) | dense")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--patience", type=int, help="early stopping on validation accuracy; 0 = off")
    p.add_argument("--seed", type=int)
    p.add_argument("--split-seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda")


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
    """A validated TrainConfig from train flags (and an optional --config file)."""
    from asymviz.train import TrainConfig

    base = TrainConfig()
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as f:
                base = TrainConfig.from_json(f.read())
        except OSError as e:
            raise CliError(f"Cannot read the config file {args.config}: {e.strerror}.") from None
    fields = {f: getattr(args, f) for f in ("dataset", "activation", "strategy", "sparsity", "conn_sparsity",
                                              "selection", "granularity", "dropout", "sparse_output", "optimizer",
                                              "lr", "momentum", "weight_decay", "update", "batch_size", "epochs",
                                              "patience", "seed", "split_seed", "device")}
    changes = {k: v for k, v in fields.items() if v is not None}
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
    from asymviz.model import parse_architecture

    text = spec.replace(" ", "")
    if "-" in text and "," not in text:
        from asymviz.data import load_dataset

        data = load_dataset(dataset, options, split_seed=split_seed)
        return parse_architecture(text, data.n_features, data.n_classes)
    return parse_architecture(text)


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
        result = fit(config, [Progress()])
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

def _csv_list(text: str, cast, flag: str) -> list:
    try:
        return [cast(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise CliError(f"{flag} must be a comma-separated list of numbers, got {text!r}.") from None


def cmd_bench(args: argparse.Namespace) -> int:
    """Dense vs sparse backward and step timings (asymviz.bench), as a table or JSON."""
    import torch

    from asymviz.bench import backward_table, format_table
    from asymviz.model import parse_architecture

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
    batches = _csv_list(args.batch, int, "--batch")
    sparsities = _csv_list(args.sparsity, float, "--sparsity")
    strategies = [s for s in args.strategy.replace(" ", "").split(",") if s]
    rows = []
    for strategy in strategies:
        for batch in batches:
            part = backward_table(widths, batch=batch, sparsities=sparsities, strategy=strategy,
                                  conn_sparsity=args.conn_sparsity, granularity=args.granularity,
                                  n_in=args.n_in, n_out=args.n_out, optimizer=args.optimizer,
                                  device=args.device, repeats=args.repeats, warmup=args.warmup, seed=args.seed)
            rows += part
            if not args.json:
                print(f"{args.n_in}-{'-'.join(map(str, widths))}-{args.n_out}, batch {batch}, {args.granularity}, "
                      f"{args.optimizer}, {part[0]['device']}, {torch.get_num_threads()} threads, "
                      f"median of {args.repeats}", flush=True)
                print(format_table(part) + "\n", flush=True)
    if args.json:
        print(json.dumps(rows))
    return 0


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
    p.add_argument("--batch", default="128", help="batch size(s), comma-separated (default 128)")
    p.add_argument("--strategy", default="neuron", help="strategy name(s), comma-separated (default neuron)")
    p.add_argument("--sparsity", default="0,0.5,0.9,0.95", help="neuron sparsities, comma-separated")
    p.add_argument("--conn-sparsity", type=float, default=0.0, help="connection sparsity (excessive, refined)")
    p.add_argument("--granularity", default="batch", help="batch | example")
    p.add_argument("--optimizer", default="adam", help="sgd | momentum | adam")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per variant (median; default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (the reference benchmark uses 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print all rows as one JSON list")
    p.set_defaults(func=cmd_bench)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
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
