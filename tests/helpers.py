"""Small helpers the tests (and the measurement scripts in scripts/) share: polling for a
condition, a free port, a dashboard's health, the process tree under a pid, stopping a session."""

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request


def until(predicate, timeout: float = 60.0, what: str = "the condition", every: float = 0.1):
    """Poll until predicate() is truthy and return its value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    """Whether a Streamlit server answers its health endpoint on 127.0.0.1:port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=3) as r:
            return r.read().strip() == b"ok"
    except OSError:
        return False


def process_tree() -> dict[int, list[int]]:
    """parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process under pid (children, their children, ...)."""
    tree, out, todo = process_tree(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_session(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM a process started with start_new_session=True and everything in its session;
    SIGKILL them if they are not gone after `grace` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class FakePool:
    """Stands in for a Runner where only its worker pool is read (lab.write_pool_status)."""

    workers = 2

    def __init__(self, pids):
        self.pids = pids

    def worker_pids(self):
        return self.pids


@contextlib.contextmanager
def one_torch_thread():
    """Training in a test's own process with one torch thread (two spinning threads on a busy
    2-core machine are many times slower); the old count comes back after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
