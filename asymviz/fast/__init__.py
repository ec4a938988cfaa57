"""What only makes the sparse backward and the lazy update fast (DESIGN.md §5).

`asymviz/sparse.py` and `asymviz/optim.py` hold the plain reference: select -> mask -> the three
products of DESIGN §1, and a lazy update that gathers the entries with gradient, applies the
textbook rule and scatters them back. That reference is the specification and the test oracle;
this package computes the same results faster and is entered through a few named calls:

    compact.backward(...)     the layer's backward products: on the kept rows (and columns) only
                              when that pays (`compact.use_compact`), else full size
    compact.abs_colsum / abs_ the selection scores in one pass / in reused storage
    gradbuf.deliver(...)      dW into the layer's persistent gradient buffer (no fresh n_out x n_in
                              allocation or clearing per step; kept across zero_grad(set_to_none))
    gradbuf.zero_ / block_of  zero_grad(set_to_none=False) on the rows written; the backward's dW rows
    lazy.step(...)            the optimizer's update in one pass (C kernels) or in place on rows
    kernels                   the compiled C loops behind a typed, checked interface

Switches (read once, from the environment):
    ASYMVIZ_FAST=0      the plain reference path everywhere (backward and optimizer), nothing here runs
    ASYMVIZ_KERNELS=0   the fast path without the C kernels (PyTorch ops for the same work)
`use(False)` / `use(True)` / `use(None)` (back to the environment) and the `plain()` context
manager switch the whole operator at run time (the tests compare the paths with them).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

_enabled: bool | None = None


def enabled() -> bool:
    """True unless the plain reference path was asked for (ASYMVIZ_FAST=0 or `use(False)`)."""
    global _enabled
    if _enabled is None:
        _enabled = os.environ.get("ASYMVIZ_FAST", "1").strip().lower() not in ("0", "no", "off", "false")
    return _enabled


def use(on: bool | None) -> None:
    """Switch the fast path on or off for the whole process (None: as ASYMVIZ_FAST says)."""
    global _enabled
    _enabled = None if on is None else bool(on)


@contextmanager
def plain():
    """Run the block on the plain reference path (backward and optimizer)."""
    before = _enabled
    use(False)
    try:
        yield
    finally:
        use(before)


def status() -> str:
    """One line: which path the sparse backward and the lazy update take."""
    from asymviz.fast import kernels

    if not enabled():
        return "plain reference path (ASYMVIZ_FAST=0)"
    return f"fast path; CPU hot loops: {kernels.status()}"
