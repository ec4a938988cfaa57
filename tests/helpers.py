"""Small helpers the tests share: polling for a condition, a free port, a dashboard's health."""

import socket
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
