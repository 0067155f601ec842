"""Datasets of the paper: files, loading, validation, and the task streams.

Riemer et al., *Generation and Consolidation of Recollections for Efficient Deep Lifelong
Learning*, use MNIST (Sections 3, 5.1), Omniglot (Sections 3, 5.1, 5.2; Appendix A.3, A.4),
CIFAR-100 split into 20 tasks (Sections 5, 5.2) and CIFAR-10 for transfer (Section 5.2, Table 4).

Files. Each dataset is one ``<name>.npz`` archive in :func:`data_dir` (``$RECOLLECT_DATA``, else
``~/.cache/recollect/data``) with the schema of the data README (``../shared/data/README.md`` beside the project).
:func:`ensure` downloads the official dataset with torchvision and converts it when a file is
missing; :func:`load_npz` validates keys, dtypes and shapes and caches the arrays per process.

Tensors follow ``recollect/CONVENTIONS.md``: images ``torch.uint8`` ``(N, C, H, W)`` in 0..255,
labels and task indices ``torch.int64`` ``(N,)``. Arrays and tensors returned from the caches are
shared between callers: never modify them in place.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "DATA_ENV",
    "DATASETS",
    "DataError",
    "ImageSet",
    "TaskStream",
    "cifar10",
    "cifar100",
    "cifar100_tasks",
    "data_dir",
    "ensure",
    "load_npz",
    "mnist",
    "omniglot28",
    "omniglot_multitask",
    "omniglot_tasks",
]

OFFLINE_ENV = "RECOLLECT_OFFLINE"
DATA_ENV = "RECOLLECT_DATA"
DATASETS = ("mnist", "cifar10", "cifar100", "omniglot")


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or does not follow the schema; the message says how to fix it."""


def data_dir() -> Path:
    """Directory holding the ``<name>.npz`` files: ``$RECOLLECT_DATA`` if set, else ``~/.cache/recollect/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "recollect" / "data"


def _dir_origin() -> str:
    return f"set by {DATA_ENV}" if os.environ.get(DATA_ENV) else f"the default; {DATA_ENV} is not set"


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names are {', '.join(DATASETS)}")


# --------------------------------------------------------------------------------------------
# Schema (the data README). A shape entry is an int (fixed) or a str (a named dimension that must
# agree between the keys that share it). _COUNTS fixes named dimensions of complete datasets.
# "U" is any unicode string dtype.
# --------------------------------------------------------------------------------------------

_SCHEMA: dict[str, dict[str, tuple[str, tuple]]] = {
    "mnist": {
        "train_x": ("uint8", ("Ntrain", 28, 28)),
        "train_y": ("uint8", ("Ntrain",)),
        "test_x": ("uint8", ("Ntest", 28, 28)),
        "test_y": ("uint8", ("Ntest",)),
    },
    "cifar10": {
        "train_x": ("uint8", ("Ntrain", 32, 32, 3)),
        "train_y": ("uint8", ("Ntrain",)),
        "test_x": ("uint8", ("Ntest", 32, 32, 3)),
        "test_y": ("uint8", ("Ntest",)),
        "train_index": ("uint16", ("Ntrain",)),
        "test_index": ("uint16", ("Ntest",)),
        "names": ("U", (10,)),
    },
    "cifar100": {
        "train_x": ("uint8", ("Ntrain", 32, 32, 3)),
        "train_fine": ("uint8", ("Ntrain",)),
        "train_coarse": ("uint8", ("Ntrain",)),
        "test_x": ("uint8", ("Ntest", 32, 32, 3)),
        "test_fine": ("uint8", ("Ntest",)),
        "test_coarse": ("uint8", ("Ntest",)),
        "fine_names": ("U", (100,)),
        "coarse_names": ("U", (20,)),
        "official_split": ("bool", ()),
    },
    "omniglot": {
        "x": ("uint8", ("N", 105, 105)),
        "alphabet": ("uint8", ("N",)),
        "character": ("uint16", ("N",)),
        "drawer": ("uint8", ("N",)),
        "background": ("bool", ("N",)),
        "alphabet_names": ("U", (50,)),
    },
}

# cifar10: the shared copy is a subset, so any N is accepted.
_COUNTS: dict[str, dict[str, int]] = {
    "mnist": {"Ntrain": 60000, "Ntest": 10000},
    "cifar10": {},
    "cifar100": {"Ntrain": 50000, "Ntest": 10000},
    "omniglot": {"N": 32460},
}

# (key, exclusive upper bound, lower bound) for label-like arrays.
_RANGES: dict[str, list[tuple[str, int, int]]] = {
    "mnist": [("train_y", 10, 0), ("test_y", 10, 0)],
    "cifar10": [("train_y", 10, 0), ("test_y", 10, 0)],
    "cifar100": [("train_fine", 100, 0), ("test_fine", 100, 0), ("train_coarse", 20, 0), ("test_coarse", 20, 0)],
    "omniglot": [("alphabet", 50, 0), ("drawer", 21, 1), ("x", 2, 0)],
}


def _fix_hint(path: Path) -> str:
    return (
        f"Delete {path} so that it is downloaded again, or set {DATA_ENV} to a directory "
        f"holding a good copy of {path.name}."
    )


def _validate(name: str, arrays: dict[str, np.ndarray], path: Path, exact_counts: bool = True) -> None:
    """Check ``arrays`` against the README schema of ``name``; raise :class:`DataError` otherwise.

    ``exact_counts=False`` accepts any number of examples (used for tiny converted test data).
    """
    schema = _SCHEMA[name]
    problems = []
    missing = [k for k in schema if k not in arrays]
    if missing:
        problems.append(f"missing key(s) {', '.join(missing)} (found {', '.join(sorted(arrays)) or 'none'})")
    dims: dict[str, int] = dict(_COUNTS[name]) if exact_counts else {}
    for key, (dtype, shape) in schema.items():
        if key not in arrays:
            continue
        a = arrays[key]
        ok_dtype = a.dtype.kind == "U" if dtype == "U" else a.dtype == np.dtype(dtype)
        if not ok_dtype:
            problems.append(f"{key} has dtype {a.dtype}, expected {dtype if dtype != 'U' else 'unicode'}")
        if a.ndim != len(shape):
            problems.append(f"{key} has shape {a.shape}, expected {len(shape)} dimension(s)")
            continue
        for axis, (got, want) in enumerate(zip(a.shape, shape)):
            if isinstance(want, str):
                want = dims.setdefault(want, got)
            if got != want:
                problems.append(f"{key} has shape {a.shape}, expected {want} along axis {axis}")
                break
    if not problems:
        for key, hi, lo in _RANGES[name]:
            a = arrays[key]
            if a.size and (int(a.min()) < lo or int(a.max()) >= hi):
                problems.append(f"{key} has values in {int(a.min())}..{int(a.max())}, expected {lo}..{hi - 1}")
    if problems:
        raise DataError(f"{path} is not a valid {name} file: {'; '.join(problems)}. {_fix_hint(path)}")


@functools.lru_cache(maxsize=8)
def _load_cached(path_str: str, mtime_ns: int, size: int, name: str) -> dict[str, np.ndarray]:
    path = Path(path_str)
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, zlib.error) as exc:
        raise DataError(
            f"{path} could not be read as a {name} .npz archive (corrupt or truncated: "
            f"{type(exc).__name__}: {exc}). {_fix_hint(path)}"
        ) from exc
    _validate(name, arrays, path)
    return arrays


def load_npz(name: str) -> dict[str, np.ndarray]:
    """Load and validate ``<data_dir>/<name>.npz`` (downloading it first if missing, see :func:`ensure`).

    Returns a new dict of the cached arrays (the arrays themselves are shared: do not modify them).
    Raises :class:`DataError` for a corrupt, truncated or non-conforming file and ``ValueError``
    for an unknown ``name``.
    """
    path = ensure(name).resolve()
    st = path.stat()
    return dict(_load_cached(str(path), st.st_mtime_ns, st.st_size, name))


# --------------------------------------------------------------------------------------------
# Download and conversion (torchvision -> README schema)
# --------------------------------------------------------------------------------------------


def _np(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _convert_mnist(train_ds: Any, test_ds: Any) -> dict[str, np.ndarray]:
    """MNIST objects with ``.data`` (N, 28, 28) and ``.targets`` (torchvision.datasets.MNIST) -> schema."""
    return {
        "train_x": _np(train_ds.data).astype(np.uint8),
        "train_y": _np(train_ds.targets).astype(np.uint8),
        "test_x": _np(test_ds.data).astype(np.uint8),
        "test_y": _np(test_ds.targets).astype(np.uint8),
    }


def _convert_cifar10(train_ds: Any, test_ds: Any) -> dict[str, np.ndarray]:
    """CIFAR-10 objects with ``.data`` (N, 32, 32, 3) HWC, ``.targets``, ``.classes`` -> schema (official order)."""
    train_x, test_x = _np(train_ds.data).astype(np.uint8), _np(test_ds.data).astype(np.uint8)
    return {
        "train_x": train_x,
        "train_y": _np(train_ds.targets).astype(np.uint8),
        "test_x": test_x,
        "test_y": _np(test_ds.targets).astype(np.uint8),
        "train_index": np.arange(len(train_x), dtype=np.uint16),
        "test_index": np.arange(len(test_x), dtype=np.uint16),
        "names": np.array(list(train_ds.classes), dtype=str),
    }


def _convert_cifar100(
    train_ds: Any,
    test_ds: Any,
    train_coarse: Sequence[int],
    test_coarse: Sequence[int],
    coarse_names: Sequence[str],
) -> dict[str, np.ndarray]:
    """CIFAR-100 objects (``.data`` HWC, fine ``.targets``, ``.classes`` = fine names) plus the coarse
    labels and names from the official pickles -> schema. Test images stay in the official order,
    so ``official_split`` is True (the shared copy is grouped by class instead)."""
    return {
        "train_x": _np(train_ds.data).astype(np.uint8),
        "train_fine": _np(train_ds.targets).astype(np.uint8),
        "train_coarse": _np(train_coarse).astype(np.uint8),
        "test_x": _np(test_ds.data).astype(np.uint8),
        "test_fine": _np(test_ds.targets).astype(np.uint8),
        "test_coarse": _np(test_coarse).astype(np.uint8),
        "fine_names": np.array(list(train_ds.classes), dtype=str),
        "coarse_names": np.array(list(coarse_names), dtype=str),
        "official_split": np.array(True),
    }


_CHARACTER_RE = re.compile(r"character(\d+)$")
_DRAWER_RE = re.compile(r"_(\d+)\.png$")


def _convert_omniglot(background_ds: Any, evaluation_ds: Any) -> dict[str, np.ndarray]:
    """Two torchvision-like Omniglot sets -> schema.

    Each set needs ``_characters`` (``"<alphabet>/characterNN"`` paths), ``_flat_character_images``
    (``(file name "XXXX_YY.png", character index)`` pairs) and ``ds[i] -> (PIL image, target)``
    returning the i-th flat image. Images are inverted (white background, black ink -> 1 = ink).
    Order: background then evaluation, alphabets sorted by folder name, then character, then drawer.
    """
    records = []  # (set rank, alphabet name, character, drawer, ds, index)
    for set_rank, ds in enumerate((background_ds, evaluation_ds)):
        for i, (file_name, char_idx) in enumerate(ds._flat_character_images):
            alphabet, char_folder = os.path.split(os.path.normpath(ds._characters[char_idx]))
            m_char, m_drawer = _CHARACTER_RE.search(char_folder), _DRAWER_RE.search(file_name)
            if m_char is None or m_drawer is None:
                raise ValueError(f"unexpected Omniglot file {ds._characters[char_idx]}/{file_name}")
            records.append((set_rank, alphabet, int(m_char.group(1)) - 1, int(m_drawer.group(1)), ds, i))
    records.sort(key=lambda r: r[:4])
    names: list[str] = []
    for set_rank in (0, 1):
        names += sorted({r[1] for r in records if r[0] == set_rank})
    alphabet_index = {a: k for k, a in enumerate(names)}
    x = np.empty((len(records), 105, 105), dtype=np.uint8)
    for n, (_, _, _, _, ds, i) in enumerate(records):
        image = np.asarray(ds[i][0].convert("L"))
        x[n] = image < 128  # black stroke on white -> 1 = ink
    return {
        "x": x,
        "alphabet": np.array([alphabet_index[r[1]] for r in records], dtype=np.uint8),
        "character": np.array([r[2] for r in records], dtype=np.uint16),
        "drawer": np.array([r[3] for r in records], dtype=np.uint8),
        "background": np.array([r[0] == 0 for r in records], dtype=bool),
        "alphabet_names": np.array(names, dtype=str),
    }


def _read_cifar_pickle(path: str) -> dict:
    with open(path, "rb") as f:  # an md5-checked official file, read as torchvision does
        return pickle.load(f, encoding="latin1")


def _download(name: str, root: Path) -> dict[str, np.ndarray]:
    """Download the official dataset ``name`` with torchvision into ``root`` and convert it."""
    from torchvision import datasets

    r = str(root)
    if name == "mnist":
        return _convert_mnist(datasets.MNIST(r, train=True, download=True), datasets.MNIST(r, train=False, download=True))
    if name == "cifar10":
        return _convert_cifar10(
            datasets.CIFAR10(r, train=True, download=True), datasets.CIFAR10(r, train=False, download=True)
        )
    if name == "cifar100":
        train = datasets.CIFAR100(r, train=True, download=True)
        test = datasets.CIFAR100(r, train=False, download=True)
        folder = os.path.join(train.root, train.base_folder)
        train_coarse = _read_cifar_pickle(os.path.join(folder, train.train_list[0][0]))["coarse_labels"]
        test_coarse = _read_cifar_pickle(os.path.join(folder, train.test_list[0][0]))["coarse_labels"]
        coarse_names = _read_cifar_pickle(os.path.join(folder, train.meta["filename"]))["coarse_label_names"]
        return _convert_cifar100(train, test, train_coarse, test_coarse, coarse_names)
    if name == "omniglot":
        return _convert_omniglot(
            datasets.Omniglot(r, background=True, download=True), datasets.Omniglot(r, background=False, download=True)
        )
    raise ValueError(f"unknown dataset {name!r}; valid names are {', '.join(DATASETS)}")


def ensure(name: str) -> Path:
    """Path of ``<data_dir>/<name>.npz``; if missing, download the official dataset and convert it.

    The download goes to a temporary directory under :func:`data_dir`; the converted archive is
    validated against the README schema and written atomically (temporary file + ``os.replace``).
    Any failure of that (no network, read-only directory, ...) raises :class:`DataError`; with
    ``$RECOLLECT_OFFLINE`` set (the GPU queue sets it) a missing file fails at once, no download tried.
    """
    _check_name(name)
    directory = data_dir()
    path = directory / f"{name}.npz"
    if path.is_file():
        return path
    if os.environ.get(OFFLINE_ENV):
        raise DataError(
            f"{path.name} not found in {directory} ({_dir_origin()}), and {OFFLINE_ENV} is set (a machine without "
            f"network, such as a GPU host: no download is tried). Bring {path.name} along (python -m recollect stage) "
            f"and point {DATA_ENV} at the folder holding it.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=f".download-{name}-") as tmp:
            arrays = _download(name, Path(tmp))
            _validate(name, arrays, path)
            tmp_file = Path(tmp) / f"{name}.npz"
            with open(tmp_file, "wb") as f:
                np.savez_compressed(f, **arrays)
            os.replace(tmp_file, path)
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable file": report it
        raise DataError(
            f"{path.name} not found in {directory} ({_dir_origin()}) and downloading the official "
            f"dataset failed ({type(exc).__name__}: {exc}). Put a copy of {path.name} there or set "
            f"{DATA_ENV} to a directory holding it."
        ) from exc
    return path


# --------------------------------------------------------------------------------------------
# Image sets
# --------------------------------------------------------------------------------------------

Index = Union[torch.Tensor, slice, Sequence[int]]


@dataclass
class ImageSet:
    """Images ``x`` uint8 ``(N, C, H, W)``, labels ``y`` int64 ``(N,)``, task indices or None."""

    x: torch.Tensor
    y: torch.Tensor
    task: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"ImageSet.x must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.dtype != torch.int64 or self.y.shape != self.x.shape[:1]:
            raise ValueError(f"ImageSet.y must be int64 ({len(self.x)},), got {self.y.dtype} {tuple(self.y.shape)}")
        if self.task is not None and (self.task.dtype != torch.int64 or self.task.shape != self.x.shape[:1]):
            raise ValueError(
                f"ImageSet.task must be None or int64 ({len(self.x)},), got {self.task.dtype} {tuple(self.task.shape)}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: Union[str, torch.device]) -> "ImageSet":
        """The same set with all tensors on ``device``."""
        task = None if self.task is None else self.task.to(device)
        return ImageSet(self.x.to(device), self.y.to(device), task)

    def subset(self, idx: Index) -> "ImageSet":
        """Examples ``idx`` (an index tensor, a list of indices, or a slice), in that order."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long).to(self.x.device)
        task = None if self.task is None else self.task[idx]
        return ImageSet(self.x[idx], self.y[idx], task)

    def per_class(self, k: int, classes: Optional[Union[torch.Tensor, Sequence[int]]] = None) -> "ImageSet":
        """The first ``k`` examples of each class (of ``classes``, default all), in dataset order.

        "First" is by rank within the class, so the result does not depend on whether the set is
        grouped by class (like the shared CIFAR-100 test set) or interleaved (the official order).
        """
        if k < 0:
            raise ValueError(f"per_class needs k >= 0, got {k}")
        return self.subset(_rank_within_class_below(self.y, k, classes))

    def shuffled(self, generator: torch.Generator) -> "ImageSet":
        """The set in a random order drawn from ``generator`` (a CPU ``torch.Generator``)."""
        return self.subset(torch.randperm(len(self), generator=generator))


def _rank_within_class_below(y: torch.Tensor, k: int, classes=None) -> torch.Tensor:
    """Indices (ascending) of the examples whose rank within their class is < k (and class in ``classes``)."""
    y = y.cpu()
    if len(y) == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(y, stable=True).indices
    sorted_y = y[order]
    counts = torch.bincount(sorted_y - sorted_y[0])
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(y)) - starts[sorted_y - sorted_y[0]]
    keep = rank < k
    if classes is not None:
        keep &= torch.isin(y, torch.as_tensor(classes, dtype=torch.long).cpu())
    return keep.nonzero().squeeze(1)


def _images_nchw(x: np.ndarray) -> torch.Tensor:
    """uint8 numpy (N, H, W) or (N, H, W, C) -> a new contiguous uint8 tensor (N, C, H, W)."""
    t = torch.from_numpy(x)
    t = t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2)
    return t.contiguous() if not t.is_contiguous() else t.clone()


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(y.astype(np.int64))


def _check_split(split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(valid)}")


def mnist(split: str) -> ImageSet:
    """MNIST (Sections 3, 5.1): ``"train"`` = official training images 0..49999, ``"val"`` =
    50000..59999, ``"test"`` = the official test set. x is ``(N, 1, 28, 28)``, 255 = ink."""
    _check_split(split, ("train", "val", "test"))
    d = load_npz("mnist")
    x, y = (d["test_x"], d["test_y"]) if split == "test" else (d["train_x"], d["train_y"])
    if split != "test":
        part = slice(0, 50000) if split == "train" else slice(50000, None)
        x, y = x[part], y[part]
    return ImageSet(_images_nchw(x), _labels(y))


def cifar10(split: str) -> ImageSet:
    """CIFAR-10 ``"train"`` / ``"test"`` (Section 5.2, Table 4: the autoencoder's transfer source),
    ``(N, 3, 32, 32)``. Returns what the file holds (the shared copy is a 4,000 / 1,000 subset)."""
    _check_split(split, ("train", "test"))
    d = load_npz("cifar10")
    return ImageSet(_images_nchw(d[f"{split}_x"]), _labels(d[f"{split}_y"]))


def cifar100(split: str, label: str = "fine") -> ImageSet:
    """CIFAR-100 ``"train"`` / ``"test"`` with ``"fine"`` (100) or ``"coarse"`` (20) labels, ``(N, 3, 32, 32)``.

    The test order is whatever the file holds (official, or grouped by class in the shared copy)."""
    _check_split(split, ("train", "test"))
    if label not in ("fine", "coarse"):
        raise ValueError(f"unknown label {label!r}; use 'fine' or 'coarse'")
    d = load_npz("cifar100")
    return ImageSet(_images_nchw(d[f"{split}_x"]), _labels(d[f"{split}_{label}"]))


@functools.lru_cache(maxsize=2)
def _omniglot28_cached(path_str: str, mtime_ns: int, size: int):
    d = load_npz("omniglot")
    src = torch.from_numpy(d["x"])
    out = torch.empty((src.shape[0], 1, 28, 28), dtype=torch.uint8)
    chunk = 2048  # bounds the float32 working memory (~90 MB)
    for i in range(0, src.shape[0], chunk):
        ink = src[i : i + chunk].unsqueeze(1).float().mul_(255.0)
        small = torch.nn.functional.interpolate(ink, size=(28, 28), mode="area")
        out[i : i + chunk] = small.round_().clamp_(0, 255).to(torch.uint8)
    return out, _labels(d["alphabet"]), _labels(d["character"]), _labels(d["drawer"])


def omniglot28() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All 32,460 Omniglot images at 28x28, as the paper uses them (Section 3: "28x28 images with
    1 channel and 8-bits per pixel"), in file order.

    The 105x105 originals are area-averaged (``interpolate(mode="area")`` on ink * 255, rounded), so
    ink = 255 and background = 0 as in MNIST. Returns ``(x uint8 (N, 1, 28, 28), alphabet, character,
    drawer)`` (int64). Cached in memory: do not modify the returned tensors in place.
    """
    path = ensure("omniglot").resolve()
    st = path.stat()
    return _omniglot28_cached(str(path), st.st_mtime_ns, st.st_size)


# --------------------------------------------------------------------------------------------
# Task streams
# --------------------------------------------------------------------------------------------


@dataclass
class TaskStream:
    """A sequence of tasks learned in order (Section 5.2).

    ``train[t]`` / ``test[t]`` hold task t's examples with GLOBAL class ids in ``y`` and t in
    ``task``; ``task_classes[t]`` is the sorted tensor of task t's global class ids; the model has
    ``n_classes`` output units; images have shape ``image_shape`` = (C, H, W).
    """

    name: str
    train: list[ImageSet]
    test: list[ImageSet]
    task_classes: list[torch.Tensor]
    n_classes: int
    image_shape: tuple

    @property
    def n_tasks(self) -> int:
        return len(self.train)

    def class_mask(self, task: int) -> torch.Tensor:
        """Boolean ``(n_classes,)`` mask of task ``task``'s output units (multi-head evaluation)."""
        mask = torch.zeros(self.n_classes, dtype=torch.bool)
        mask[self.task_classes[task]] = True
        return mask

    def subset(
        self,
        train_per_task: Optional[int] = None,
        test_per_class: Optional[int] = None,
        tasks: Optional[int] = None,
    ) -> "TaskStream":
        """A smaller stream: the first ``tasks`` tasks, the first ``train_per_task`` training examples
        of each task (stream order), the first ``test_per_class`` test examples of each class (by rank
        within the class). ``None`` keeps everything; ``n_classes`` is unchanged."""
        t_keep = self.n_tasks if tasks is None else tasks
        if not 0 < t_keep <= self.n_tasks:
            raise ValueError(f"tasks must be in 1..{self.n_tasks}, got {tasks}")
        train = self.train[:t_keep]
        test = self.test[:t_keep]
        if train_per_task is not None:
            train = [s.subset(slice(0, train_per_task)) for s in train]
        if test_per_class is not None:
            test = [s.per_class(test_per_class) for s in test]
        return TaskStream(self.name, train, test, self.task_classes[:t_keep], self.n_classes, self.image_shape)


def _task_set(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, t: int) -> ImageSet:
    return ImageSet(x[idx], y[idx], torch.full((len(idx),), t, dtype=torch.int64))


def cifar100_tasks(split: str = "coarse") -> TaskStream:
    """Incremental CIFAR-100 (Sections 5, 5.2): 20 tasks of 5 classes, global labels = fine labels.

    ``"coarse"``: task t = the 5 fine classes of superclass t (the paper's text: "20 tasks made up of
    the course grained super class labels"). ``"gem"``: task t = fine labels 5t..5t+4, the split of
    GEM (Lopez-Paz & Ranzato, 2017). A task's training examples keep the official training order;
    test examples keep the file's order (do not rely on it).
    """
    if split not in ("coarse", "gem"):
        raise ValueError(f"unknown CIFAR-100 task split {split!r}; valid splits are coarse, gem")
    d = load_npz("cifar100")
    if split == "coarse":
        fine, coarse = d["train_fine"].astype(np.int64), d["train_coarse"].astype(np.int64)
        classes = [torch.from_numpy(np.unique(fine[coarse == t])) for t in range(20)]
    else:
        classes = [torch.arange(5 * t, 5 * t + 5) for t in range(20)]
    streams: dict[str, list[ImageSet]] = {}
    for part in ("train", "test"):
        x, y = _images_nchw(d[f"{part}_x"]), _labels(d[f"{part}_fine"])
        streams[part] = [_task_set(x, y, torch.isin(y, c).nonzero().squeeze(1), t) for t, c in enumerate(classes)]
    return TaskStream(f"cifar100-{split}", streams["train"], streams["test"], classes, 100, (3, 32, 32))


@functools.lru_cache(maxsize=4)
def _omniglot_split(path_str: str, mtime_ns: int, size: int, train_fraction: float, seed: int):
    """Global class ids and per-task (train, test) index tensors into :func:`omniglot28`'s arrays."""
    _, alphabet, character, drawer = omniglot28()
    n_alphabets = int(alphabet.max()) + 1
    n_chars = torch.zeros(n_alphabets, dtype=torch.int64).scatter_reduce(0, alphabet, character + 1, "amax")
    offsets = torch.cumsum(n_chars, 0) - n_chars
    cls = offsets[alphabet] + character
    n_classes = int(n_chars.sum())
    # Examples sorted by (class, drawer); classes are contiguous in task (alphabet) order.
    order = torch.from_numpy(np.lexsort((drawer.numpy(), cls.numpy())))
    counts = torch.bincount(cls, minlength=n_classes)
    g = torch.Generator().manual_seed(seed)
    is_test = torch.zeros(len(cls), dtype=torch.bool)
    start = 0
    for c in range(n_classes):  # one permutation per character, in global class order
        n = int(counts[c])
        n_test = round(n * (1.0 - train_fraction))
        members = order[start : start + n]
        is_test[members[torch.randperm(n, generator=g)[:n_test]]] = True
        start += n
    train_idx, test_idx = [], []
    task_of = alphabet[order]
    for t in range(n_alphabets):
        in_task = order[task_of == t]  # (character, drawer) order
        tr = in_task[~is_test[in_task]]
        train_idx.append(tr[torch.randperm(len(tr), generator=g)])
        test_idx.append(in_task[is_test[in_task]])
    task_classes = [torch.arange(int(offsets[t]), int(offsets[t] + n_chars[t])) for t in range(n_alphabets)]
    return cls, train_idx, test_idx, task_classes, n_classes


def _omniglot_split_for(train_fraction: float, seed: int):
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be strictly between 0 and 1, got {train_fraction}")
    path = ensure("omniglot").resolve()
    st = path.stat()
    return _omniglot_split(str(path), st.st_mtime_ns, st.st_size, float(train_fraction), int(seed))


def omniglot_tasks(train_fraction: float = 0.9, seed: int = 0) -> TaskStream:
    """Incremental Omniglot (Sections 5, 5.2; Appendix A.4): 50 tasks, one per alphabet in the
    order of ``alphabet_names``; global class id = running index of (alphabet, character), 1,623
    classes; 28x28 images from :func:`omniglot28`.

    Split: the paper follows "90% multi-task training and 10% testing splits for Omniglot established
    in (Yang & Hospedales, 2017)" without saying how the split was drawn. Here, per character, a
    permutation of its 20 drawers (``torch.Generator().manual_seed(seed)``, one ``randperm`` per
    character, drawn in global class order) puts the first ``round(20 * (1 - train_fraction))`` = 2
    drawers in the test set and the other 18 in the training set. Within a task, training examples
    are ordered by (character, drawer) and then shuffled with the same generator (one permutation per
    task, after all character permutations), so a single-pass stream does not see one character at
    a time. Test examples are in (character, drawer) order.
    """
    cls, train_idx, test_idx, task_classes, n_classes = _omniglot_split_for(train_fraction, seed)
    x = omniglot28()[0]
    train = [_task_set(x, cls, idx, t) for t, idx in enumerate(train_idx)]
    test = [_task_set(x, cls, idx, t) for t, idx in enumerate(test_idx)]
    return TaskStream("omniglot", train, test, list(task_classes), n_classes, (1, 28, 28))


def omniglot_multitask(train_fraction: float = 0.9, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """The split of :func:`omniglot_tasks` as one (train, test) pair with ``task`` = alphabet, for the
    multi-task distillation teacher (Section 5.1, Appendix A.3). Examples are ordered by
    (class, drawer); shuffle with :meth:`ImageSet.shuffled` for training."""
    cls, train_idx, test_idx, _, _ = _omniglot_split_for(train_fraction, seed)
    x, alphabet, _, drawer = omniglot28()
    sets = []
    for parts in (train_idx, test_idx):
        idx = torch.cat(parts)
        idx = idx[torch.from_numpy(np.lexsort((drawer[idx].numpy(), cls[idx].numpy())))]
        sets.append(ImageSet(x[idx], cls[idx], alphabet[idx]))
    return sets[0], sets[1]
