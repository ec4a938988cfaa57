"""One layer's reusable storage for the fast path: the backward's temporaries and the gradient buffer."""

from __future__ import annotations

import math

import torch


class Workspace:
    """One layer's reusable storage: the backward's temporaries and the gradient buffer."""

    __slots__ = ("scratch", "grad")

    def __init__(self) -> None:
        self.scratch: dict[str, torch.Tensor] = {}
        self.grad = None  # asymviz.fast.gradbuf.GradBuffer, made on first use

    def temp(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        """Reusable storage for a temporary that never leaves the backward (None: allocate normally).

        Fresh megabyte-sized CPU allocations cost page faults every step; reusing them does not.
        Off when the backward itself is being recorded (create_graph=True).
        """
        if torch.is_grad_enabled():
            return None
        numel = math.prod(shape)
        buf = self.scratch.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = like.new_empty(numel)
            self.scratch[name] = buf
        return buf[:numel].view(shape)


def workspace(state) -> Workspace:
    """The layer's workspace (`state`: its LayerState), made on first use."""
    if state.workspace is None:
        state.workspace = Workspace()
    return state.workspace
