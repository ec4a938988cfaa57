"""Compiled CPU kernels for the hot loops of the sparse backward and the lazy optimizer update.

PyTorch's eager ops make one pass over memory per op: the lazy Adam update of k kept rows takes
a dozen passes over them, `refined`'s row x column blocks go through flat index tensors. The C
kernels in `_kernels.c` do each of those in one pass. They are compiled on first use with the
system C compiler (`$CC`, else `cc`) into a per-user cache, keyed by the source's hash, and
called through ctypes; no build step, no extra package. Where there is no compiler (or
`ASYMVIZ_KERNELS=0`), `library()` returns None and every caller uses PyTorch ops instead, with
the same results (tests compare both paths with the float64 reference).

    python -m asymviz kernels      build them now and say where they are (setup scripts do this)

ASYMVIZ_KERNEL_DIR: where the compiled library lives (default: $XDG_CACHE_HOME/asymviz or
~/.cache/asymviz); a prebuilt library there is used as is (the Docker image ships one).
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

import torch

SOURCE = Path(__file__).with_name("_kernels.c")
FLAGS = ["-O3", "-std=c99", "-fno-math-errno", "-fPIC", "-shared"]
KINDS = {"sgd": 0, "momentum": 1, "adam": 2}

_lib: ctypes.CDLL | None = None
_tried = False
_status = "not loaded yet"


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


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    P, I, F, C = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.asymviz_update.argtypes = [C, P, I, P, I, P, P, P, I, P, I, P, P, P, P, P, F, F, F, F, F, F, F, C]
    lib.asymviz_abs_colsum.argtypes = [P, I, I, P, C]
    lib.asymviz_gather_block.argtypes = [P, I, P, I, P, I, P, C]
    lib.asymviz_scatter_block.argtypes = [P, I, P, I, P, I, P, C]
    lib.asymviz_replace_rows.argtypes = [P, I, P, I, P, P, I, C]
    lib.asymviz_gather_rows.argtypes = [P, I, P, I, P, C]
    lib.asymviz_gather_cols.argtypes = [P, I, I, P, I, P, C]
    lib.asymviz_expand_cols.argtypes = [P, I, I, P, I, P, C]
    for fn in (lib.asymviz_update, lib.asymviz_abs_colsum, lib.asymviz_gather_block, lib.asymviz_scatter_block,
               lib.asymviz_replace_rows, lib.asymviz_gather_rows, lib.asymviz_gather_cols, lib.asymviz_expand_cols):
        fn.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first use; None where they cannot be had."""
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


def status() -> str:
    """One line: which implementation runs the CPU hot loops, and why."""
    library()
    return _status


# ----------------------------------------------------------------------------- callers' helpers

ACCEPTED = (torch.float32, torch.int64, torch.int32, torch.bool)  # values, indices, step counts, masks


def usable(*tensors: torch.Tensor | None) -> ctypes.CDLL | None:
    """The library, if these tensors can go to it: on the CPU, strided, contiguous, float32 values,
    int64 indices (int32 only as Adam's per-entry step counts), bool masks. Otherwise None."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cpu" or t.layout != torch.strided or not t.is_contiguous() or t.dtype not in ACCEPTED:
            return None
    return library()


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _i64(t: torch.Tensor | None) -> torch.Tensor | None:
    """Indices as the contiguous int64 the C code reads (a no-op for asymviz's own)."""
    if t is None or (t.dtype == torch.int64 and t.is_contiguous()):
        return t
    return t.to(torch.int64).contiguous()


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


def update(kind: str, p: torch.Tensor, grad: torch.Tensor, grad_block: bool, rows: torch.Tensor, *,
           m: torch.Tensor | None = None, v: torch.Tensor | None = None, cols: torch.Tensor | None = None,
           mask: torch.Tensor | None = None, row_t: torch.Tensor | None = None,
           entry_step: torch.Tensor | None = None, scale: torch.Tensor | None = None,
           shift: torch.Tensor | None = None, lr: float = 0.0, momentum: float = 0.0,
           betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0) -> None:
    """The lazy update of the kept entries of p, in place (see `_kernels.c`: asymviz_update).

    p: (n_out, n_in) or (n_out,); grad: p.grad, or with grad_block the kept entries (k, kc);
    rows (k,) int64; cols (kc,) int64 or None; mask (k, kc) bool or None; Adam: m, v, scale and
    shift tables, and row_t (k,) int64 step counts after this step, or entry_step (n_out, n_in)
    int32 counts incremented here. Momentum: m is the momentum buffer.
    """
    lib = library()
    rows, cols, row_t = _i64(rows), _i64(cols), _i64(row_t)
    n_in = p.shape[1] if p.dim() == 2 else 1
    k = len(rows)
    kc = len(cols) if cols is not None else n_in
    expected = k * kc if grad_block else p.numel()
    if grad.numel() != expected or (mask is not None and mask.numel() != k * kc):
        raise ValueError(f"kernels.update: a gradient of {grad.numel()} entries (mask "
                         f"{None if mask is None else mask.numel()}) for {k} rows x {kc} columns")
    lib.asymviz_update(KINDS[kind], p.data_ptr(), n_in, grad.data_ptr(), int(grad_block), _ptr(m), _ptr(v),
                       rows.data_ptr(), k, _ptr(cols), kc, _ptr(mask), _ptr(row_t), _ptr(entry_step),
                       _ptr(scale), _ptr(shift), lr, momentum, betas[0], betas[1], 1.0 - betas[0], 1.0 - betas[1],
                       weight_decay, _threads(k * kc))


def abs_colsum(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """sum_b |x[b, j]| of a contiguous float32 (B, n) CPU tensor, in one read."""
    rows, n = x.shape
    out = torch.empty(n, dtype=x.dtype) if out is None else out
    library().asymviz_abs_colsum(x.data_ptr(), rows, n, out.data_ptr(), _threads(x.numel()))
    return out


def gather_block(full: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """full[rows][:, cols] (k, kc) of a contiguous float32 (n_out, n_in) CPU tensor, in one pass."""
    rows, cols = _i64(rows), _i64(cols)
    out = torch.empty(len(rows), len(cols), dtype=full.dtype) if out is None else out
    library().asymviz_gather_block(full.data_ptr(), full.shape[1], rows.data_ptr(), len(rows), cols.data_ptr(),
                                   len(cols), out.data_ptr(), _threads(out.numel()))
    return out


def scatter_block(full: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """full[rows][:, cols] = block, in place, in one pass; returns full."""
    rows, cols = _i64(rows), _i64(cols)
    library().asymviz_scatter_block(full.data_ptr(), full.shape[1], rows.data_ptr(), len(rows), cols.data_ptr(),
                                    len(cols), block.data_ptr(), _threads(block.numel()))
    return full


def replace_rows(full: torch.Tensor, rows: torch.Tensor, block: torch.Tensor, old: torch.Tensor | None) -> torch.Tensor:
    """full[rows] = block (k, n_in) and full[old rows not in rows] = 0, in place, one pass;
    rows and old sorted ascending. Returns full."""
    rows, old = _i64(rows), _i64(old)
    n_in = full.shape[1]
    library().asymviz_replace_rows(full.data_ptr(), n_in, rows.data_ptr(), len(rows), block.data_ptr(),
                                   _ptr(old), 0 if old is None else len(old), _threads(block.numel()))
    return full


def gather_rows(full: torch.Tensor, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """full[rows] (k, n) of a contiguous float32 (n_rows, n) CPU tensor (row copies)."""
    rows = _i64(rows)
    n = full.shape[1]
    out = torch.empty(len(rows), n, dtype=full.dtype) if out is None else out
    library().asymviz_gather_rows(full.data_ptr(), n, rows.data_ptr(), len(rows), out.data_ptr(), _threads(out.numel()))
    return out


def gather_cols(x: torch.Tensor, cols: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x[:, cols] (B, kc) of a contiguous float32 (B, n) CPU tensor."""
    cols = _i64(cols)
    rows, n = x.shape
    out = torch.empty(rows, len(cols), dtype=x.dtype) if out is None else out
    library().asymviz_gather_cols(x.data_ptr(), rows, n, cols.data_ptr(), len(cols), out.data_ptr(),
                                  _threads(out.numel()))
    return out


def expand_cols(x: torch.Tensor, cols: torch.Tensor, n: int) -> torch.Tensor:
    """A fresh (B, n) tensor, zero except [:, cols] = x (B, kc)."""
    cols = _i64(cols)
    rows = x.shape[0]
    out = torch.empty(rows, n, dtype=x.dtype)
    library().asymviz_expand_cols(x.data_ptr(), rows, n, cols.data_ptr(), len(cols), out.data_ptr(),
                                  _threads(out.numel()))
    return out


def clear_rows(full: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """full[rows] = 0, in place (memset per row). Returns full."""
    rows = _i64(rows)
    n_in = full.shape[1]
    library().asymviz_replace_rows(full.data_ptr(), n_in, None, 0, None, rows.data_ptr(), len(rows),
                                   _threads(len(rows) * n_in))
    return full
