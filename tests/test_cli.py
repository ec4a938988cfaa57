"""The command line: exit codes, one-sentence errors, JSON output."""

import json
import subprocess
import sys

import pytest


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "asymviz", *args], capture_output=True, text=True, timeout=timeout)


def test_train_json_last_line():
    p = run("train", "--dataset", "moons", "--hidden", "16", "--epochs", "2", "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    for key in ("status", "train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "gap",
                "backward_ms_mean", "step_ms_mean", "epochs", "config"):
        assert key in result
    assert result["config"]["dataset"] == "moons" and result["epochs"] == 2
    assert "epoch   2/2" in p.stderr  # a progress line per epoch


def test_full_architecture_and_data_options():
    p = run("train", "--dataset", "xor", "--data-option", "n_samples=200", "--hidden", "2-8-2", "--epochs", "1", "--json")
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout.splitlines()[-1])["config"]
    assert cfg["hidden"] == [8] and cfg["dataset_options"] == {"n_samples": 200}


def test_config_file_round_trip(tmp_path):
    p = run("train", "--dataset", "wine", "--hidden", "8", "--epochs", "1", "--seed", "3", "--json")
    cfg = json.loads(p.stdout.splitlines()[-1])["config"]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    q = run("train", "--config", str(path), "--json")
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout.splitlines()[-1])["config"] == cfg


def test_csv_training(tmp_path):
    rows = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{'yes' if i % 2 else 'no'}" for i in range(80)]
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows))
    p = run("train", "--csv", str(path), "--label", "label", "--hidden", "8", "--epochs", "1", "--json")
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("args,message", [
    (["--sparsity", "1.2"], "sparsity must be in [0, 1)"),
    (["--hidden", "abc"], "Architecture 'abc' is not valid"),
    (["--hidden", "10-20-10"], "must start with 64 inputs and end with 10 classes"),
    (["--dataset", "nope"], "Unknown dataset 'nope'"),
    (["--strategy", "nope"], "Unknown strategy 'nope'"),
    (["--epochs", "x"], "epochs must be a whole number, got 'x'."),
    (["--lr", "0"], "lr must be in (0, 10], got '0'."),
    (["--sparse-output", "--dropout", "auto", "--activation", "ReLU"], "Unknown activation 'ReLU'"),
    (["--device", "cuda"] , "no CUDA GPU"),
    (["--config", "/nonexistent/run.json"], "Cannot read the config file"),
    (["--csv", "/nonexistent.csv", "--label", "y"], "Could not read the CSV file"),
    (["--csv", "x.csv"], "--csv needs --label"),
    (["--data-option", "noise"], "KEY=VALUE"),
])
def test_bad_input_exits_2_with_one_sentence(args, message):
    p = run("train", *args)
    if "cuda" in args and p.returncode == 0:
        pytest.skip("a GPU is present")
    assert p.returncode == 2
    assert message in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_datasets_lists_embedded_first():
    p = run("datasets")
    assert p.returncode == 0 and p.stdout.splitlines()[0].startswith("digits")


def test_every_command_has_working_help():
    """--help of every subcommand prints (argparse expands % in help texts: one stray % broke it)."""
    from asymviz.cli import build_parser

    commands = [[]]
    for name, sub in build_parser()._subparsers._group_actions[0].choices.items():
        commands.append([name])
        if sub._subparsers is not None:
            commands += [[name, verb] for verb in sub._subparsers._group_actions[0].choices]
    for command in commands:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([*command, "--help"])
        assert exit_.value.code == 0, command
