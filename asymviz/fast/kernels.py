"""Compiled CPU kernels for the hot loops of the sparse backward and the lazy optimizer update.

PyTorch's eager ops make one pass over memory per op: the lazy Adam update of k kept rows takes
a dozen passes over them, `refined`'s row x column blocks go through flat index tensors. The C
kernels in `_kernels.c` do each of those in one pass. They are compiled on first use with the
system C compiler (`$CC`, else `cc`) into a per-user cache, keyed by the source's hash, and
called through ctypes; no build step, no extra package. Where there is no compiler (or
`ASYMVIZ_KERNELS=0`), `available()` is False and every caller uses PyTorch ops instead, with
the same results (tests compare both paths with the float64 reference).

    python -m asymviz kernels      build them now and say where they are (setup scripts do this)

ASYMVIZ_KERNEL_DIR: where the compiled library lives (default: $XDG_CACHE_HOME/asymviz or
~/.cache/asymviz); a prebuilt library there is used as is (the Docker image ships one).

The interface is tensors in, tensors out: every function checks that its tensors are CPU,
contiguous, of the dtype and shape the C code reads (`KernelArgumentError`, a ValueError, says
which is not), and the C code checks every index against the dimension it indexes before it
touches memory. Pointers and the ctypes signatures never leave this module. `accepts(...)` says
whether tensors can go to the kernels at all (the callers' fallback test).

Why ctypes and not a `torch.library` custom op built with `torch.utils.cpp_extension`
(at::parallel_for, TORCH_CHECK)? Measured with a prototype of the hottest kernel (lazy Adam on
whole rows, the same arithmetic; it gave the same bits), PyTorch 2.13 CPU, 2 threads, a shared
2-core machine (min of 5 repeats; the machine was busy, so the large case is +-30 %):

    cold build                         torch.library 10-21 s     ctypes (cc -O3) 0.3-0.7 s
    one call, 8 x 4, k = 1             torch.library 3.0-3.5 us  ctypes + checks here 10-11 us
    one call, 256 x 64, k = 26         4.7 us                    11.7-12.4 us
    one call, 2048 x 2048, k = 205     374-485 us                285-404 us

The custom op saves ~7 us per call (its checks are C++; here ~6 us go to the Python checks
and ~5 us to ctypes' argument conversion): ~30 us per step for two asymmetric layers with Adam,
under 1 % of the reference network's step, a few % of a classroom network's. Against it: a
build 30x longer that needs a C++ compiler, ninja and PyTorch's and Python's headers (the lab
image removes its compiler after building), and a binary tied to the exact PyTorch version (a
rebuild at every upgrade). The plain C file and ctypes stay.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch

SOURCE = Path(__file__).with_name("_kernels.c")
FLAGS = ["-O3", "-std=c99", "-fno-math-errno", "-fPIC", "-shared"]
KINDS = {"sgd": 0, "momentum": 1, "adam": 2}
ERRORS = {1: "a row index is out of range", 2: "a column index is out of range",
          3: "a step count is beyond the coefficient table"}

_lib: dict | None = None  # the library's bound functions by name
_tried = False
_status = "not loaded yet"


class KernelArgumentError(ValueError):
    """A tensor that the C kernels cannot take (wrong device, dtype, shape or an index out of range)."""


# ----------------------------------------------------------------------------- build and load

def kernel_dir() -> Path:
    """Where the compiled library is kept (ASYMVIZ_KERNEL_DIR, else the user's cache)."""
    if os.environ.get("ASYMVIZ_KERNEL_DIR"):
        return Path(os.environ["ASYMVIZ_KERNEL_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "asymviz"


def library_path() -> Path:
    """The library's file name carries a hash of the source and flags: a change rebuilds it."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + sys.platform.encode()).hexdigest()[:16]
    return kernel_dir() / f"asymviz_kernels_{digest}.so"


def _compile(target: Path) -> None:
    """Build with OpenMP (torch's thread pool, see `_kernels.c`) if the compiler can, else without."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler!r} not found)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)  # built aside, renamed into place: safe
    os.close(fd)  # when several worker processes build at once
    try:
        for extra in (["-fopenmp"], []):
            run = subprocess.run([compiler, *FLAGS, *extra, str(SOURCE), "-o", tmp, "-lm"],
                                 capture_output=True, text=True, timeout=120)
            if run.returncode == 0:
                break
        else:
            raise RuntimeError(f"{compiler} failed: {run.stderr.strip()[:500]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # builds of other sources stay: another checkout may be using one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _uses_openmp(path: Path) -> bool:
    return b"omp_get_thread_num" in path.read_bytes()


def _bind(lib: ctypes.CDLL) -> dict:
    P, I, F, C = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    signatures = {
        "asymviz_update": [C, P, I, I, P, I, P, P, P, I, P, I, P, P, P, P, P, I, F, F, F, F, F, F, F, C],
        "asymviz_abs_colsum": [P, I, I, P, C],
        "asymviz_gather_block": [P, I, I, P, I, P, I, P, C],
        "asymviz_scatter_block": [P, I, I, P, I, P, I, P, C],
        "asymviz_replace_rows": [P, I, I, P, I, P, P, I, C],
        "asymviz_gather_rows": [P, I, I, P, I, P, C],
        "asymviz_gather_cols": [P, I, I, P, I, P, C],
        "asymviz_expand_cols": [P, I, I, P, I, P, C],
    }
    functions = {}
    for name, argtypes in signatures.items():
        fn = functions[name] = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return functions


def library() -> dict | None:
    """The loaded kernels (their bound functions by name), building them on first use; None
    where they cannot be had."""
    global _lib, _tried, _status
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("ASYMVIZ_KERNELS", "1").strip().lower() in ("0", "no", "off", "false"):
        _status = "off (ASYMVIZ_KERNELS=0): PyTorch ops"
        return None
    path = library_path()
    try:
        if not path.exists():
            _compile(path)
        _lib = _bind(ctypes.CDLL(str(path)))
        threads = "OpenMP" if _uses_openmp(path) else "single-threaded"
        _status = f"compiled C kernels, {threads} ({path})"
    except Exception as exc:  # no compiler, read-only cache, ...: the PyTorch ops do the same work
        _lib = None
        _status = f"unavailable ({exc}): PyTorch ops"
    return _lib


def available() -> bool:
    """True when the kernels are built and loaded (building them on first use)."""
    return library() is not None


def status() -> str:
    """One line: which implementation runs the CPU hot loops, and why."""
    library()
    return _status


# ----------------------------------------------------------------------------- argument checks

VALUES, INDEX = torch.float32, torch.int64
ACCEPTED = (torch.float32, torch.int64, torch.int32, torch.bool)  # values, indices, step counts, masks


def _plain(t: torch.Tensor) -> bool:
    """A contiguous, strided CPU tensor (cheap attribute reads: these checks run every step)."""
    return t.layout is torch.strided and t.is_cpu and t.is_contiguous()


def accepts(*tensors: torch.Tensor | None) -> bool:
    """True when the kernels are loaded and these tensors are of a kind they take: on the CPU,
    strided, contiguous, float32 values, int64 indices, int32 step counts, bool masks (None: absent)."""
    for t in tensors:
        if t is not None and not (t.dtype in ACCEPTED and _plain(t)):
            return False
    return available()


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise KernelArgumentError(f"{name} must be a tensor, got {type(t).__name__}.")
    if not _plain(t):
        raise KernelArgumentError(f"{name} must be a contiguous CPU tensor, got {t.device} {t.layout} "
                                  f"(contiguous: {t.layout is torch.strided and t.is_contiguous()}).")
    if t.dtype is not dtype:
        raise KernelArgumentError(f"{name} must be {dtype}, got {t.dtype}.")
    if shape is not None and t.shape != shape:
        raise KernelArgumentError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}.")


def _index(name: str, t: torch.Tensor) -> int:
    """An index list: 1-D int64 (range-checked by the C code); returns its length."""
    _check(name, t, INDEX)
    if t.dim() != 1:
        raise KernelArgumentError(f"{name} must be 1-D, got shape {tuple(t.shape)}.")
    return t.shape[0]


def _matrix(name: str, t: torch.Tensor) -> tuple[int, int]:
    _check(name, t, VALUES)
    if t.dim() != 2:
        raise KernelArgumentError(f"{name} must be 2-D, got shape {tuple(t.shape)}.")
    return t.shape[0], t.shape[1]


def _out(out: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=VALUES)
    _check("out", out, VALUES, shape)
    return out


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _call(fn: str, *args) -> None:
    lib = library()
    if lib is None:
        raise RuntimeError(f"the C kernels are not loaded: {status()}")
    code = lib[fn](*args)
    if code:
        raise KernelArgumentError(f"{fn}: {ERRORS.get(code, f'error {code}')}.")


def _shares_torch_pool() -> bool:
    """True when torch has GNU OpenMP (libgomp) loaded, so the kernels' OpenMP loops run on its
    pool; elsewhere (Intel or LLVM OpenMP, no /proc) a second runtime would compete with
    torch's threads for the same cores, so the kernels stay on one thread."""
    global _gomp
    if _gomp is None:
        try:
            with open("/proc/self/maps") as maps:
                _gomp = any("libgomp" in line for line in maps)
        except OSError:
            _gomp = False
    return _gomp


_gomp: bool | None = None


def _threads(work: int) -> int:
    """Threads for a kernel over `work` elements: torch's count, one for small work."""
    if work < 65536 or not _shares_torch_pool():
        return 1
    return max(1, torch.get_num_threads())


# ----------------------------------------------------------------------------- the lazy update

class Entries(NamedTuple):
    """Which entries of a (n_out, n_in) parameter an update touches: rows (k,) int64, and inside
    them cols (kc,) int64 (None: all n_in) and a (k, kc) bool mask (None: all)."""

    rows: torch.Tensor
    cols: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class AdamCoefficients(NamedTuple):
    """Adam's per-step-count factors (see `asymviz.optim.adam_table`) and its hyperparameters."""

    scale: torch.Tensor  # (T,) float32: bc1 / (lr sqrt(bc2)) by step count
    shift: torch.Tensor  # (T,) float32: eps bc1 / lr by step count
    betas: tuple[float, float]


def _fits(t: torch.Tensor, dtype: torch.dtype, shape: tuple) -> bool:
    """(is_contiguous raises for a sparse tensor: the caller treats that as not fitting)"""
    return t.dtype is dtype and t.shape == shape and t.is_cpu and t.is_contiguous()


def _update(kind: int, p: torch.Tensor, grad: torch.Tensor, grad_is_block: bool, at: Entries,
            m=None, v=None, row_t=None, entry_step=None, adam: AdamCoefficients | None = None,
            lr: float = 0.0, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
    rows, cols, mask = at
    scale, shift, (b1, b2) = adam if adam is not None else (None, None, (0.0, 0.0))
    try:  # every tensor as the C code reads it (one expression: this runs for each parameter, each step)
        shape = p.shape
        two_d = len(shape) == 2
        n_out, n_in = (shape[0], shape[1]) if two_d else (shape[0], 1)
        k = rows.shape[0] if rows.dim() == 1 else -1
        kc = n_in if cols is None else cols.shape[0] if cols.dim() == 1 and two_d else -1
        ok = (k >= 0 and kc >= 0 and len(shape) in (1, 2) and _fits(p, VALUES, shape)
              and _fits(grad, VALUES, ((k, kc) if two_d else (k,)) if grad_is_block else shape)
              and _fits(rows, INDEX, (k,)) and (cols is None or _fits(cols, INDEX, (kc,)))
              and (mask is None or _fits(mask, torch.bool, (k, kc)))
              and (m is None or _fits(m, VALUES, shape)) and (v is None or _fits(v, VALUES, shape))
              and (adam is None or (_fits(scale, VALUES, scale.shape) and scale.dim() == 1
                                    and _fits(shift, VALUES, scale.shape)
                                    and (_fits(row_t, INDEX, (k,)) if row_t is not None
                                         else _fits(entry_step, torch.int32, shape)))))
    except (AttributeError, IndexError, RuntimeError):  # not a tensor, 0-d, sparse
        ok = False
    if not ok:
        _explain(p, grad, grad_is_block, at, m, v, row_t, entry_step, adam)
    _call("asymviz_update", kind, p.data_ptr(), n_out, n_in, grad.data_ptr(), int(grad_is_block), _ptr(m), _ptr(v),
          rows.data_ptr(), k, _ptr(cols), kc, _ptr(mask), _ptr(row_t), _ptr(entry_step), _ptr(scale),
          _ptr(shift), 0 if scale is None else scale.shape[0], lr, momentum, b1, b2, 1.0 - b1, 1.0 - b2,
          weight_decay, _threads(k * kc))


def _explain(p, grad, grad_is_block, at, m, v, row_t, entry_step, adam) -> None:
    """Raise KernelArgumentError naming the first argument of `_update` the C code cannot take."""
    _check("p", p, VALUES)
    if p.dim() not in (1, 2):
        raise KernelArgumentError(f"p must be 1-D or 2-D, got shape {tuple(p.shape)}.")
    n_in = p.shape[1] if p.dim() == 2 else 1
    k = _index("rows", at.rows)
    if at.cols is not None and p.dim() != 2:
        raise KernelArgumentError("cols apply to a 2-D parameter only.")
    kc = _index("cols", at.cols) if at.cols is not None else n_in
    _check("grad", grad, VALUES, ((k, kc) if p.dim() == 2 else (k,)) if grad_is_block else p.shape)
    if at.mask is not None:
        _check("mask", at.mask, torch.bool, (k, kc))
    for name, t in (("m", m), ("v", v)):
        if t is not None:
            _check(name, t, VALUES, p.shape)
    if adam is not None:
        _check("scale", adam.scale, VALUES)
        if adam.scale.dim() != 1:
            raise KernelArgumentError(f"scale must be 1-D, got shape {tuple(adam.scale.shape)}.")
        _check("shift", adam.shift, VALUES, adam.scale.shape)
        if row_t is not None:
            _check("row_t", row_t, INDEX, (k,))  # range-checked against the table by the C code
        else:
            _check("entry_step", entry_step, torch.int32, p.shape)
    raise KernelArgumentError("the update's arguments do not fit together.")  # unreachable by construction


def sgd_(p: torch.Tensor, grad: torch.Tensor, at: Entries, *, lr: float, weight_decay: float = 0.0,
         grad_is_block: bool = False) -> None:
    """p[at] -= lr (g + wd p) in place. grad: p.grad, or with grad_is_block only the entries (k, kc)."""
    _update(KINDS["sgd"], p, grad, grad_is_block, at, lr=lr, weight_decay=weight_decay)


def momentum_(p: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, at: Entries, *, lr: float, momentum: float,
              weight_decay: float = 0.0, grad_is_block: bool = False) -> None:
    """buf[at] = mu buf + g; p[at] -= lr buf, in place (buf: the momentum buffer, p's shape)."""
    _update(KINDS["momentum"], p, grad, grad_is_block, at, m=buf, lr=lr, momentum=momentum,
            weight_decay=weight_decay)


def adam_(p: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, at: Entries,
          coefficients: AdamCoefficients, *, row_t: torch.Tensor | None = None,
          entry_step: torch.Tensor | None = None, weight_decay: float = 0.0, grad_is_block: bool = False) -> None:
    """Adam on the entries at, in place: m, v updated, p -= m / (sqrt(v) scale[t] + shift[t]).

    Step counts: row_t (k,) int64, each kept row's count after this step (whole rows only), or
    entry_step (p's shape) int32, per entry, incremented here for the entries updated.
    """
    if (row_t is None) == (entry_step is None):
        raise KernelArgumentError("adam_ needs exactly one of row_t and entry_step.")
    if row_t is not None and (at.cols is not None or at.mask is not None):
        raise KernelArgumentError("row_t applies to whole rows only (no cols, no mask).")
    _update(KINDS["adam"], p, grad, grad_is_block, at, m=m, v=v, row_t=row_t, entry_step=entry_step,
            adam=coefficients, weight_decay=weight_decay)


# ----------------------------------------------------------------------------- backward helpers

def abs_colsum(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_b |x[b, j]| of a (B, n) tensor, in one read: (n,)."""
    rows, n = _matrix("x", x)
    out = _out(out, (n,))
    _call("asymviz_abs_colsum", x.data_ptr(), rows, n, out.data_ptr(), _threads(x.numel()))
    return out


def gather_rows(full: torch.Tensor, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """full[rows] (k, n) of a (n_rows, n) tensor (row copies)."""
    n_rows, n = _matrix("full", full)
    k = _index("rows", rows)
    out = _out(out, (k, n))
    _call("asymviz_gather_rows", full.data_ptr(), n_rows, n, rows.data_ptr(), k, out.data_ptr(), _threads(out.numel()))
    return out


def gather_cols(x: torch.Tensor, cols: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x[:, cols] (B, kc) of a (B, n) tensor."""
    rows, n = _matrix("x", x)
    kc = _index("cols", cols)
    out = _out(out, (rows, kc))
    _call("asymviz_gather_cols", x.data_ptr(), rows, n, cols.data_ptr(), kc, out.data_ptr(), _threads(out.numel()))
    return out


def expand_cols(x: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    """A fresh (B, n) tensor, zero except [:, cols] = x (B, kc)."""
    rows, kc = _matrix("x", x)
    if _index("cols", cols) != kc:
        raise KernelArgumentError(f"cols must have one index per column of x ({kc}), got {len(cols)}.")
    out = torch.empty(rows, n, dtype=VALUES)
    _call("asymviz_expand_cols", x.data_ptr(), rows, n, cols.data_ptr(), kc, out.data_ptr(), _threads(out.numel()))
    return out


def gather_block(full: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """full[rows][:, cols] (k, kc) of a (n_out, n_in) tensor, in one pass."""
    n_out, n_in = _matrix("full", full)
    k, kc = _index("rows", rows), _index("cols", cols)
    out = _out(out, (k, kc))
    _call("asymviz_gather_block", full.data_ptr(), n_out, n_in, rows.data_ptr(), k, cols.data_ptr(), kc,
          out.data_ptr(), _threads(out.numel()))
    return out


def scatter_block(full: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """full[rows][:, cols] = block (k, kc), in place, in one pass; returns full."""
    n_out, n_in = _matrix("full", full)
    k, kc = _index("rows", rows), _index("cols", cols)
    _check("block", block, VALUES, (k, kc))
    _call("asymviz_scatter_block", full.data_ptr(), n_out, n_in, rows.data_ptr(), k, cols.data_ptr(), kc,
          block.data_ptr(), _threads(block.numel()))
    return full


def replace_rows(full: torch.Tensor, rows: torch.Tensor, block: torch.Tensor, old: torch.Tensor | None) -> torch.Tensor:
    """full[rows] = block (k, n_in) and full[old rows not in rows] = 0, in place, one pass;
    rows and old sorted ascending (unsorted lists only cost extra zeroing). Returns full."""
    n_out, n_in = _matrix("full", full)
    k = _index("rows", rows)
    _check("block", block, VALUES, (k, n_in))
    k_old = 0 if old is None else _index("old", old)
    _call("asymviz_replace_rows", full.data_ptr(), n_out, n_in, rows.data_ptr(), k, block.data_ptr(), _ptr(old),
          k_old, _threads(block.numel()))
    return full


def clear_rows(full: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """full[rows] = 0, in place (memset per row). Returns full."""
    n_out, n_in = _matrix("full", full)
    k = _index("rows", rows)
    _call("asymviz_replace_rows", full.data_ptr(), n_out, n_in, None, 0, None, rows.data_ptr(), k,
          _threads(k * n_in))
    return full
