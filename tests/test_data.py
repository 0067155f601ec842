"""Tests of recollect.data: schema of the real files, task streams, converters, error paths.

Tests on the real files need RECOLLECT_DATA pointing at a directory with them (e.g.
../shared/data) and are skipped otherwise; no test downloads anything or writes outside tmp_path.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from recollect import data as D

# The README schema, written out independently of recollect.data: key -> (dtype, shape); None = any N.
README_SCHEMA = {
    "mnist": {
        "train_x": ("uint8", (60000, 28, 28)),
        "train_y": ("uint8", (60000,)),
        "test_x": ("uint8", (10000, 28, 28)),
        "test_y": ("uint8", (10000,)),
    },
    "cifar10": {
        "train_x": ("uint8", (None, 32, 32, 3)),
        "train_y": ("uint8", (None,)),
        "test_x": ("uint8", (None, 32, 32, 3)),
        "test_y": ("uint8", (None,)),
        "train_index": ("uint16", (None,)),
        "test_index": ("uint16", (None,)),
        "names": ("U", (10,)),
    },
    "cifar100": {
        "train_x": ("uint8", (50000, 32, 32, 3)),
        "train_fine": ("uint8", (50000,)),
        "train_coarse": ("uint8", (50000,)),
        "test_x": ("uint8", (10000, 32, 32, 3)),
        "test_fine": ("uint8", (10000,)),
        "test_coarse": ("uint8", (10000,)),
        "fine_names": ("U", (100,)),
        "coarse_names": ("U", (20,)),
        "official_split": ("bool", ()),
    },
    "omniglot": {
        "x": ("uint8", (32460, 105, 105)),
        "alphabet": ("uint8", (32460,)),
        "character": ("uint16", (32460,)),
        "drawer": ("uint8", (32460,)),
        "background": ("bool", (32460,)),
        "alphabet_names": ("U", (50,)),
    },
}


def assert_schema(arrays, name, any_n=False):
    schema = README_SCHEMA[name]
    assert set(arrays) == set(schema), f"{name}: keys {sorted(arrays)}"
    for key, (dtype, shape) in schema.items():
        a = arrays[key]
        if dtype == "U":
            assert a.dtype.kind == "U", (key, a.dtype)
        else:
            assert a.dtype == np.dtype(dtype), (key, a.dtype)
        assert a.ndim == len(shape), (key, a.shape)
        for got, want in zip(a.shape, shape):
            if want is not None and not (any_n and want > 1000):
                assert got == want, (key, a.shape)


def require(name):
    path = D.data_dir() / f"{name}.npz"
    if not path.is_file():
        pytest.skip(
            f"{path.name} not found in {D.data_dir()}: set RECOLLECT_DATA to a directory holding the "
            f"dataset files (e.g. ../shared/data) to run this test"
        )


@pytest.fixture(scope="session")
def c100_coarse():
    require("cifar100")
    return D.cifar100_tasks("coarse")


@pytest.fixture(scope="session")
def omni_stream():
    require("omniglot")
    return D.omniglot_tasks()


# ------------------------------------------------------------------ data dir, names


def test_data_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path / "d"))
    assert D.data_dir() == tmp_path / "d"
    monkeypatch.delenv(D.DATA_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert D.data_dir() == tmp_path / ".cache" / "recollect" / "data"


def test_unknown_dataset_and_splits_raise_value_error():
    with pytest.raises(ValueError, match="mnist.*cifar10.*cifar100.*omniglot"):
        D.load_npz("svhn")
    with pytest.raises(ValueError, match="svhn"):
        D.ensure("svhn")
    with pytest.raises(ValueError, match="coarse, gem"):
        D.cifar100_tasks("fine")
    with pytest.raises(ValueError, match="train, val, test"):
        D.mnist("validation")
    with pytest.raises(ValueError, match="train, test"):
        D.cifar10("val")
    with pytest.raises(ValueError, match="label"):
        D.cifar100("train", label="medium")
    with pytest.raises(ValueError, match="train_fraction"):
        D.omniglot_tasks(train_fraction=1.0)


# ------------------------------------------------------------------ real files


@pytest.mark.parametrize("name", D.DATASETS)
def test_shared_files_follow_readme_schema(name):
    require(name)
    arrays = D.load_npz(name)
    assert_schema(arrays, name)
    key = "x" if name == "omniglot" else "train_x"
    assert D.load_npz(name)[key] is arrays[key]  # cached per process


def test_mnist_splits():
    require("mnist")
    train, val, test = D.mnist("train"), D.mnist("val"), D.mnist("test")
    assert (len(train), len(val), len(test)) == (50000, 10000, 10000)
    assert train.x.shape == (50000, 1, 28, 28) and train.x.dtype == torch.uint8
    assert train.y.dtype == torch.int64 and train.task is None
    assert train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    raw = D.load_npz("mnist")
    assert torch.equal(val.y, torch.from_numpy(raw["train_y"][50000:].astype(np.int64)))
    assert torch.equal(val.x[0, 0], torch.from_numpy(raw["train_x"][50000]))
    assert int(train.x.max()) == 255 and int(train.x[:, :, 0, 0].max()) == 0  # ink = 255, corners empty


def test_cifar10_layout():
    require("cifar10")
    train, test = D.cifar10("train"), D.cifar10("test")
    raw = D.load_npz("cifar10")
    assert train.x.shape == (len(raw["train_x"]), 3, 32, 32) and test.x.shape[1:] == (3, 32, 32)
    assert train.y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # HWC -> CHW: channel c of pixel (i, j)
    assert train.x[7, :, 5, 11].tolist() == raw["train_x"][7, 5, 11, :].tolist()


def test_cifar100_sets():
    require("cifar100")
    fine, coarse = D.cifar100("test"), D.cifar100("test", label="coarse")
    assert fine.x.shape == (10000, 3, 32, 32)
    assert int(fine.y.max()) == 99 and int(coarse.y.max()) == 19
    assert D.cifar100("train").y[:10].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]


def test_cifar100_coarse_tasks(c100_coarse):
    s = c100_coarse
    raw = D.load_npz("cifar100")
    table = np.zeros(100, dtype=np.int64)
    table[raw["train_fine"]] = raw["train_coarse"]
    assert s.n_tasks == 20 and s.n_classes == 100 and s.image_shape == (3, 32, 32)
    all_classes = torch.cat(s.task_classes)
    assert sorted(all_classes.tolist()) == list(range(100))
    for t in range(20):
        classes = s.task_classes[t]
        assert len(classes) == 5 and torch.equal(classes, classes.sort().values)
        assert set(table[classes.numpy()].tolist()) == {t}  # all 5 fine classes in superclass t
        assert len(s.train[t]) == 2500 and len(s.test[t]) == 500
        for part in (s.train[t], s.test[t]):
            assert torch.isin(part.y, classes).all()
            assert (part.task == t).all()
        assert int(s.class_mask(t).sum()) == 5 and s.class_mask(t)[classes].all()
    # training examples of a task keep the official training order
    idx = np.flatnonzero(raw["train_coarse"] == 3)
    assert s.train[3].y.tolist() == raw["train_fine"][idx].tolist()
    assert torch.equal(s.train[3].x[17], torch.from_numpy(raw["train_x"][idx[17]]).permute(2, 0, 1))


def test_cifar100_gem_tasks():
    require("cifar100")
    s = D.cifar100_tasks("gem")
    assert s.n_tasks == 20
    for t in range(20):
        assert s.task_classes[t].tolist() == list(range(5 * t, 5 * t + 5))
        assert sorted(set(s.train[t].y.tolist())) == list(range(5 * t, 5 * t + 5))
        assert len(s.train[t]) == 2500 and len(s.test[t]) == 500


def test_task_stream_subset(c100_coarse):
    small = c100_coarse.subset(train_per_task=10, test_per_class=3, tasks=4)
    assert small.n_tasks == 4 and small.n_classes == 100
    assert [len(t) for t in small.train] == [10] * 4 and [len(t) for t in small.test] == [15] * 4
    assert torch.equal(small.train[2].y, c100_coarse.train[2].y[:10])
    assert torch.bincount(small.test[1].y, minlength=100)[c100_coarse.task_classes[1]].tolist() == [3] * 5
    with pytest.raises(ValueError):
        c100_coarse.subset(tasks=21)


def test_omniglot28():
    require("omniglot")
    x, alphabet, character, drawer = D.omniglot28()
    assert x.shape == (32460, 1, 28, 28) and x.dtype == torch.uint8
    assert alphabet.dtype == character.dtype == drawer.dtype == torch.int64
    assert int(x.max()) == 255 and int(x[:, :, 0, 0].max()) == 0
    raw = torch.from_numpy(D.load_npz("omniglot")["x"][123]).float()
    # area averaging: total ink is preserved up to rounding/bin overlap
    assert abs(float(x[123].float().mean()) - float(raw.mean() * 255)) < 8
    assert D.omniglot28()[0] is x  # cached


def test_omniglot_tasks(omni_stream):
    s = omni_stream
    assert s.n_tasks == 50 and s.n_classes == 1623 and s.image_shape == (1, 28, 28)
    assert sum(len(t) for t in s.train) == 29214 and sum(len(t) for t in s.test) == 3246
    assert torch.equal(torch.cat(s.task_classes), torch.arange(1623))
    train_y = torch.cat([t.y for t in s.train])
    test_y = torch.cat([t.y for t in s.test])
    assert torch.bincount(train_y, minlength=1623).unique().tolist() == [18]
    assert torch.bincount(test_y, minlength=1623).unique().tolist() == [2]
    for t in (0, 29, 49):
        assert torch.isin(s.train[t].y, s.task_classes[t]).all() and (s.train[t].task == t).all()
        assert torch.isin(s.test[t].y, s.task_classes[t]).all() and (s.test[t].task == t).all()
    # the stream does not see one character at a time
    y0 = s.train[0].y
    assert not torch.equal(y0, y0.sort().values)
    # alphabet 0 is Alphabet_of_the_Magi with 20 characters
    assert D.load_npz("omniglot")["alphabet_names"][0] == "Alphabet_of_the_Magi"
    assert s.task_classes[0].tolist() == list(range(20))


def test_omniglot_split_disjoint_and_deterministic(omni_stream):
    _, train_idx, test_idx, _, _ = D._omniglot_split_for(0.9, 0)
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    assert len(set(tr.tolist()) | set(te.tolist())) == 32460
    assert not set(tr.tolist()) & set(te.tolist())
    again = D.omniglot_tasks(seed=0)
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(again.train, omni_stream.train))
    other = D.omniglot_tasks(seed=1)
    assert not torch.equal(torch.cat([t.x for t in other.test]), torch.cat([t.x for t in omni_stream.test]))


def test_omniglot_multitask(omni_stream):
    train, test = D.omniglot_multitask()
    assert (len(train), len(test)) == (29214, 3246)
    assert train.task is not None and torch.equal(test.task, torch.cat([t.task for t in omni_stream.test]))
    assert torch.equal(test.x, torch.cat([t.x for t in omni_stream.test]))
    assert torch.equal(train.y, train.y.sort().values)


# ------------------------------------------------------------------ ImageSet on synthetic data


def _synthetic(y):
    y = torch.tensor(y, dtype=torch.int64)
    x = torch.arange(len(y), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return D.ImageSet(x, y, torch.zeros(len(y), dtype=torch.int64))


def test_per_class_grouped_and_interleaved():
    grouped = _synthetic([0, 0, 0, 1, 1, 1, 2, 2, 2])
    sub = grouped.per_class(2)
    assert sub.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert sub.x[:, 0, 0, 0].tolist() == [0, 1, 3, 4, 6, 7]
    interleaved = _synthetic([2, 0, 1, 2, 0, 1, 2, 0, 1])
    sub = interleaved.per_class(2)
    assert sub.x[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert sub.per_class(1, classes=[1, 2]).x[:, 0, 0, 0].tolist() == [0, 2]
    # the selection is the same set of examples whatever the order
    perm = torch.tensor([4, 0, 8, 2, 6, 1, 3, 7, 5])
    shuffled = grouped.subset(perm).per_class(1)
    assert sorted(shuffled.y.tolist()) == [0, 1, 2]
    assert shuffled.x[:, 0, 0, 0].tolist() == [4, 0, 8]  # the first of each class in the new order
    assert len(grouped.per_class(0)) == 0
    assert len(grouped.per_class(5)) == 9


def test_imageset_subset_shuffle_to():
    s = _synthetic([0, 1, 2, 3, 4, 5])
    assert len(s) == 6
    assert s.subset(slice(1, 3)).y.tolist() == [1, 2]
    assert s.subset(torch.tensor([5, 0])).x[:, 0, 0, 0].tolist() == [5, 0]
    a = s.shuffled(torch.Generator().manual_seed(3))
    b = s.shuffled(torch.Generator().manual_seed(3))
    assert torch.equal(a.y, b.y) and sorted(a.y.tolist()) == list(range(6))
    assert torch.equal(a.x[:, 0, 0, 0].long(), a.y)  # x, y, task move together
    assert s.to("cpu").y.device.type == "cpu"
    with pytest.raises(ValueError):
        D.ImageSet(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64))


def test_task_stream_helpers_synthetic():
    sets = [_synthetic([0, 1, 0, 1, 0]), _synthetic([2, 3, 2, 3])]
    s = D.TaskStream("toy", sets, sets, [torch.tensor([0, 1]), torch.tensor([2, 3])], 4, (1, 2, 2))
    assert s.n_tasks == 2
    assert s.class_mask(1).tolist() == [False, False, True, True]
    sub = s.subset(train_per_task=3, test_per_class=1, tasks=1)
    assert sub.n_tasks == 1 and sub.train[0].y.tolist() == [0, 1, 0] and sub.test[0].y.tolist() == [0, 1]


# ------------------------------------------------------------------ converters on fakes


class FakeVision:
    def __init__(self, data, targets, classes=None):
        self.data, self.targets, self.classes = data, targets, classes


def test_convert_mnist():
    tr = FakeVision(torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8), torch.tensor([5, 0, 4, 1, 9]))
    te = FakeVision(torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8), torch.tensor([7, 2, 1]))
    out = D._convert_mnist(tr, te)
    assert_schema(out, "mnist", any_n=True)
    assert out["train_y"].tolist() == [5, 0, 4, 1, 9] and out["test_x"].shape == (3, 28, 28)
    assert np.array_equal(out["train_x"], tr.data.numpy())
    D._validate("mnist", out, D.data_dir() / "mnist.npz", exact_counts=False)
    with pytest.raises(D.DataError):
        D._validate("mnist", out, D.data_dir() / "mnist.npz")  # a complete file needs 60000 images


def test_convert_cifar10():
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    rng = np.random.default_rng(0)
    tr = FakeVision(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), [6, 9, 9, 4], names)
    te = FakeVision(rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), [3, 8], names)
    out = D._convert_cifar10(tr, te)
    assert_schema(out, "cifar10")
    assert out["train_index"].tolist() == [0, 1, 2, 3] and out["names"].tolist() == names
    D._validate("cifar10", out, D.data_dir() / "cifar10.npz")  # any N is valid for cifar10


def test_convert_cifar100():
    rng = np.random.default_rng(0)
    fine_names = [f"f{i}" for i in range(100)]
    tr = FakeVision(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), [19, 29, 0, 11, 1, 86], fine_names)
    te = FakeVision(rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), [49, 33, 72], fine_names)
    out = D._convert_cifar100(tr, te, [11, 15, 4, 14, 1, 13], [10, 10, 0], [f"c{i}" for i in range(20)])
    assert_schema(out, "cifar100", any_n=True)
    assert out["test_fine"].tolist() == [49, 33, 72] and out["test_coarse"].tolist() == [10, 10, 0]
    assert bool(out["official_split"]) is True
    assert np.array_equal(out["test_x"], te.data)  # official test order kept
    D._validate("cifar100", out, D.data_dir() / "cifar100.npz", exact_counts=False)


class FakeOmniglot:
    """torchvision.datasets.Omniglot look-alike: unsorted folders, white background, black ink."""

    def __init__(self, characters, images):
        self._characters = characters
        self._flat_character_images = images  # (file name, character index)

    def __len__(self):
        return len(self._flat_character_images)

    def __getitem__(self, i):
        name, idx = self._flat_character_images[i]
        ink = int(name[:4]) * 100 + int(name[5:7])  # encode (id, drawer) as the number of ink pixels
        a = np.full((105, 105), 255, dtype=np.uint8)
        a.reshape(-1)[:ink] = 0
        return Image.fromarray(a).convert("L"), idx


def test_convert_omniglot():
    bg = FakeOmniglot(
        ["Zeta/character02", "Zeta/character01", "Alpha/character01"],
        [("0002_02.png", 0), ("0002_01.png", 0), ("0001_01.png", 1), ("0005_03.png", 2), ("0005_01.png", 2)],
    )
    ev = FakeOmniglot(["Beta/character01"], [("0009_02.png", 0)])
    out = D._convert_omniglot(bg, ev)
    assert set(out) == set(README_SCHEMA["omniglot"])
    for key, (dtype, shape) in README_SCHEMA["omniglot"].items():
        a = out[key]
        assert (a.dtype.kind == "U") if dtype == "U" else (a.dtype == np.dtype(dtype)), key
        assert a.shape[1:] == shape[1:], key
    assert out["alphabet_names"].tolist() == ["Alpha", "Zeta", "Beta"]
    assert out["alphabet"].tolist() == [0, 0, 1, 1, 1, 2]
    assert out["character"].tolist() == [0, 0, 0, 1, 1, 0]
    assert out["drawer"].tolist() == [1, 3, 1, 1, 2, 2]
    assert out["background"].tolist() == [True] * 5 + [False]
    assert set(np.unique(out["x"]).tolist()) == {0, 1}  # inverted: 1 = ink
    assert out["x"].reshape(6, -1).sum(1).tolist() == [501, 503, 101, 201, 202, 902]


# ------------------------------------------------------------------ download and file errors


def test_offline_ensure_raises_data_error(monkeypatch, tmp_path):
    def no_network(name, root):
        raise OSError("network is unreachable")

    monkeypatch.setattr(D, "_download", no_network)
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    with pytest.raises(D.DataError) as info:
        D.ensure("mnist")
    msg = str(info.value)
    assert "mnist.npz" in msg and str(tmp_path) in msg and "RECOLLECT_DATA" in msg
    assert "network is unreachable" in msg
    assert list(tmp_path.iterdir()) == []  # no temp leftovers
    with pytest.raises(D.DataError, match="omniglot.npz"):
        D.load_npz("omniglot")
    monkeypatch.delenv(D.DATA_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(D.DataError, match="default"):
        D.ensure("cifar10")


def _tiny_cifar10(n=40):
    rng = np.random.default_rng(1)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    tr = FakeVision(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).tolist(), names)
    te = FakeVision(rng.integers(0, 256, (n // 4, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n // 4).tolist(), names)
    return D._convert_cifar10(tr, te)


def test_ensure_downloads_converts_and_writes_atomically(monkeypatch, tmp_path):
    arrays = _tiny_cifar10()
    monkeypatch.setattr(D, "_download", lambda name, root: arrays)
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path / "new"))
    path = D.ensure("cifar10")
    assert path == tmp_path / "new" / "cifar10.npz"
    assert [p.name for p in path.parent.iterdir()] == ["cifar10.npz"]
    loaded = D.load_npz("cifar10")
    assert_schema(loaded, "cifar10")
    assert np.array_equal(loaded["train_x"], arrays["train_x"])
    s = D.cifar10("train")
    assert s.x.shape == (40, 3, 32, 32) and s.y.tolist() == arrays["train_y"].tolist()


def test_ensure_rejects_bad_conversion(monkeypatch, tmp_path):
    arrays = _tiny_cifar10()
    arrays["train_y"] = arrays["train_y"][:-1]
    monkeypatch.setattr(D, "_download", lambda name, root: arrays)
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    with pytest.raises(D.DataError, match="train_y"):
        D.ensure("cifar10")
    assert not (tmp_path / "cifar10.npz").exists()


def _write_npz(path, arrays):
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_truncated_npz_raises_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    blob = _write_npz(tmp_path / "cifar10.npz", _tiny_cifar10())
    assert D.load_npz("cifar10")["train_x"].shape == (40, 32, 32, 3)  # the intact file is fine
    assert len(blob) > 1000
    (tmp_path / "cifar10.npz").write_bytes(blob[:1000])
    with pytest.raises(D.DataError) as info:
        D.load_npz("cifar10")
    msg = str(info.value)
    assert "cifar10.npz" in msg and "Delete" in msg and "RECOLLECT_DATA" in msg
    assert isinstance(info.value.__cause__, (zipfile.BadZipFile, EOFError, ValueError, OSError))


def test_corrupt_member_raises_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    blob = bytearray(_write_npz(tmp_path / "cifar10.npz", _tiny_cifar10()))
    blob[200:260] = bytes(60)  # damage compressed data inside the first member
    (tmp_path / "cifar10.npz").write_bytes(bytes(blob))
    with pytest.raises(D.DataError, match="cifar10.npz"):
        D.load_npz("cifar10")


def test_missing_key_and_wrong_dtype_raise_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv(D.DATA_ENV, str(tmp_path))
    arrays = _tiny_cifar10()
    del arrays["names"]
    _write_npz(tmp_path / "cifar10.npz", arrays)
    with pytest.raises(D.DataError, match="missing key.*names"):
        D.load_npz("cifar10")
    arrays = _tiny_cifar10()
    arrays["train_x"] = arrays["train_x"].astype(np.float32)
    _write_npz(tmp_path / "cifar10.npz", arrays)
    with pytest.raises(D.DataError, match="train_x has dtype float32"):
        D.load_npz("cifar10")
    arrays = _tiny_cifar10()
    arrays["test_x"] = arrays["test_x"][:, :, :, :1]
    _write_npz(tmp_path / "cifar10.npz", arrays)
    with pytest.raises(D.DataError, match="test_x has shape"):
        D.load_npz("cifar10")
