"""Results as data: small portable files, keyed by an item's config and by the code's behaviour.

Every experiment of the book is an *item* (``recollect.experiments.items``). A finished item is a
:class:`Result`: a JSON file (config, version, provenance, the payload's tables and numbers) and,
when the payload holds arrays (weights of a teacher, a filled buffer, curves), an ``.npz`` beside it.
No pickles: the GPU host's pandas and numpy differ from the pinned ones, and a result must load on
any machine.

* Paper-profile results live in the repository (``results/<chapter>/<item>.json``), so a GPU
  session's work survives the machine; the book renders them without training.
* Smoke-profile results go to the working cache (``$RECOLLECT_CACHE/results``), through the very same
  code, so every CI run exercises the encoding.

The *version* of a result is the item's smoke fingerprint at the time it was made: the sha256 of the
item's smoke payload under the portable CPU arithmetic (``recollect.portable``), recorded by ``make
smoke`` in ``results/smoke/<chapter>.json``. A change of code that changes what an item computes
changes its smoke payload, hence its fingerprint, and every paper result made before is then
*stale*: shown as such and queued again, never dropped silently and never retrained on a CPU. A
refactoring that changes nothing keeps every result current.

Payloads are dicts whose values may be JSON-like (str, int, float, bool, None, lists, dicts),
pandas DataFrames (with ``attrs`` of the same kinds), numpy arrays or torch tensors (stored in the
npz, CPU, exact dtype). Floats are stored exactly (``repr`` round trip); NaN and infinities are
written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` so the JSON stays standard.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import io
import json
import math
import os
import pathlib
import platform
import subprocess
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .utils import atomic_write

__all__ = ["RESULTS_ENV", "ROOT", "results_dir", "encode", "decode", "fingerprint", "config_hash", "Result",
           "ResultStore", "provenance", "atomic_write", "MAX_NPZ_BYTES"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_ENV = "RECOLLECT_RESULTS"
#: a result's arrays must come back from a GPU host in one file (at most 16 MiB there)
MAX_NPZ_BYTES = 15 * 2**20


def results_dir() -> pathlib.Path:
    """``$RECOLLECT_RESULTS`` or the repository's ``results/``."""
    return pathlib.Path(os.environ.get(RESULTS_ENV) or ROOT / "results")


# ------------------------------------------------------------------------------------------------
# encoding payloads: JSON + arrays
# ------------------------------------------------------------------------------------------------
def _float(v: float):
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


_SPECIAL = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _is_tensor(v) -> bool:
    return type(v).__module__.startswith("torch") and hasattr(v, "detach")


def encode(obj, arrays: dict, path: str = "") -> object:
    """JSON-like form of ``obj``; arrays and tensors go into ``arrays`` under their path."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _float(float(obj))
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"payload keys must be strings, got {k!r} at {path or '/'}")
            if k.startswith("__"):
                raise TypeError(f"payload keys may not start with '__' ({k!r} at {path or '/'})")
            out[k] = encode(v, arrays, f"{path}/{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [encode(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, pd.DataFrame):
        cols = [str(c) for c in obj.columns]
        if len(set(cols)) != len(cols):
            raise TypeError(f"a stored DataFrame needs unique column names ({path})")
        return {"__frame__": {"columns": cols, "dtypes": [str(t) for t in obj.dtypes],
                              "data": {c: encode(obj[c].tolist(), arrays, f"{path}/{c}") for c in obj.columns},
                              "attrs": encode(dict(obj.attrs), arrays, f"{path}/attrs")}}
    if _is_tensor(obj):
        obj = obj.detach().cpu()
        dtype = str(obj.dtype).replace("torch.", "")
        if dtype == "bfloat16":
            obj = obj.float()
            dtype = "float32"
        arrays[path] = obj.numpy()
        return {"__array__": path, "torch": dtype}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"object arrays cannot be stored portably ({path})")
        arrays[path] = obj
        return {"__array__": path}
    raise TypeError(f"cannot store a {type(obj).__name__} in a result ({path or '/'}); use JSON-like values, "
                    "DataFrames, numpy arrays or torch tensors")


def decode(obj, arrays) -> object:
    """The inverse of :func:`encode` (``arrays``: a mapping path -> numpy array)."""
    if isinstance(obj, str):
        return _SPECIAL.get(obj, obj)
    if isinstance(obj, list):
        return [decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            a = np.asarray(arrays[obj["__array__"]])
            if "torch" in obj:
                import torch

                return torch.from_numpy(a.copy())
            return a
        if "__frame__" in obj:
            f = obj["__frame__"]
            cols = f["columns"]
            data = {c: decode(f["data"][c], arrays) for c in cols}
            df = pd.DataFrame(data, columns=cols)
            for c, t in zip(cols, f["dtypes"]):
                if t in ("object", "str", "string") or t.startswith("str"):
                    continue
                try:
                    df[c] = df[c].astype(t)
                except (TypeError, ValueError):
                    pass
            df.attrs.update(decode(f["attrs"], arrays))
            return df
        return {k: decode(v, arrays) for k, v in obj.items()}
    return obj


def _canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def fingerprint(payload) -> str:
    """sha256 of a payload's canonical encoding (JSON and every array's dtype, shape and bytes)."""
    arrays: dict = {}
    blob = encode(payload, arrays)
    h = hashlib.sha256(_canonical_json(blob))
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def config_hash(config: dict) -> str:
    """Short sha256 of a config's canonical JSON (what keys a result besides its version)."""
    return hashlib.sha256(_canonical_json(encode(config, {}))).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# provenance
# ------------------------------------------------------------------------------------------------
def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """sha256 (16 hex digits) of the library's source as it is now: every ``.py`` file of the
    ``recollect`` package and its settings file, by relative path. A smoke result in the local cache
    is reused only when it was made by the same code (so its fingerprint check means something)."""
    pkg = ROOT / "recollect"
    h = hashlib.sha256()
    for p in sorted([*pkg.rglob("*.py"), pkg / "portable.env"]):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(p.relative_to(pkg).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


code_hash()  # at import: the source of the code this process runs, not of files edited after it started


def provenance(device, seconds: float) -> dict:
    """Where and how a result was made: commit (with ``+dirty`` when the tree had changes), the
    library's source (:func:`code_hash`), torch, the device (the GPU's name), seconds, date (UTC).
    The commit may also come from ``$RECOLLECT_COMMIT`` (a GPU host receives a copy of the tree
    without its git history)."""
    import torch

    dev = torch.device(device)
    commit = os.environ.get("RECOLLECT_COMMIT") or _git("rev-parse", "--short=12", "HEAD") or "unknown"
    if "RECOLLECT_COMMIT" not in os.environ and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    if dev.type == "cuda":
        gpu = torch.cuda.get_device_name(dev)
    else:
        gpu = None
    return {"commit": commit, "code": code_hash(), "torch": torch.__version__, "python": platform.python_version(),
            "device": gpu or f"CPU ({platform.machine()})", "gpu": gpu, "seconds": round(float(seconds), 3),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


# ------------------------------------------------------------------------------------------------
# results and the store
# ------------------------------------------------------------------------------------------------
@dataclass
class Result:
    """One finished item: ``item`` is ``"<chapter>/<name>"``; ``payload`` the decoded data."""
    item: str
    profile: str
    config: dict
    version: str
    provenance: dict
    payload: dict = field(repr=False)
    stale: bool = False     # set by the store when the version is not the current one

    @property
    def chapter(self) -> str:
        return self.item.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.item.split("/", 1)[1]

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    def to_files(self) -> tuple[bytes, bytes | None]:
        """(JSON bytes, npz bytes or None)."""
        arrays: dict = {}
        body = encode(self.payload, arrays)
        doc = {"item": self.item, "profile": self.profile, "config": encode(self.config, {}),
               "config_hash": self.config_hash, "version": self.version, "provenance": self.provenance,
               "payload": body, "arrays": sorted(arrays)}
        js = json.dumps(doc, indent=1, sort_keys=False, allow_nan=False).encode() + b"\n"
        if not arrays:
            return js, None
        buf = io.BytesIO()
        np.savez_compressed(buf, **{_npz_key(k): v for k, v in arrays.items()})
        return js, buf.getvalue()

    @classmethod
    def from_files(cls, js: bytes, npz: bytes | None, payload: bool = True) -> "Result":
        """The result of its files; ``payload=False`` reads only what describes it (its payload is
        then None: for state checks, which need no arrays)."""
        doc = json.loads(js)
        if not payload:
            return cls(doc["item"], doc["profile"], decode(doc["config"], {}), doc["version"], doc["provenance"], None)
        arrays = {}
        if doc.get("arrays"):
            if npz is None:
                raise ValueError(f"result {doc.get('item')!r} lists arrays but its .npz is missing")
            with np.load(io.BytesIO(npz), allow_pickle=False) as z:
                arrays = {k: z[_npz_key(k)] for k in doc["arrays"]}
        return cls(doc["item"], doc["profile"], decode(doc["config"], {}), doc["version"], doc["provenance"],
                   decode(doc["payload"], arrays))


def _npz_key(path: str) -> str:
    return path.strip("/").replace("/", "__") or "_root"


class ResultStore:
    """Results of one profile under a directory: ``<root>/<chapter>/<name>.json`` (+ ``.npz``).

    ``get(item, config, version)`` returns the stored result when its config matches; a result whose
    version differs from ``version`` comes back with ``stale=True``; a result of another config is
    not returned (the config is part of the key).
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = pathlib.Path(root) if root is not None else results_dir()

    def paths(self, item: str) -> tuple[pathlib.Path, pathlib.Path]:
        chapter, _, name = item.partition("/")
        if not chapter or not name or "/" in name:
            raise ValueError(f"an item is named '<chapter>/<name>', got {item!r}")
        base = self.root / chapter / name
        return base.with_suffix(".json"), base.with_suffix(".npz")

    def read(self, item: str, payload: bool = True) -> Result | None:
        js, npz = self.paths(item)
        if not js.exists():
            return None
        if not payload:
            return Result.from_files(js.read_bytes(), None, payload=False)
        return Result.from_files(js.read_bytes(), npz.read_bytes() if npz.exists() else None)

    def get(self, item: str, config: dict | None = None, version: str | None = None,
            payload: bool = True) -> Result | None:
        res = self.read(item, payload)
        if res is None:
            return None
        if config is not None and res.config_hash != config_hash(config):
            return None
        res.stale = version is not None and res.version != version
        return res

    def put(self, result: Result) -> list[pathlib.Path]:
        js_path, npz_path = self.paths(result.item)
        js, npz = result.to_files()
        if npz is not None and len(npz) > MAX_NPZ_BYTES:
            raise ValueError(f"result {result.item}: its arrays take {len(npz) / 2**20:.1f} MiB compressed, more than "
                             f"the {MAX_NPZ_BYTES / 2**20:.0f} MiB one file may take back from a GPU host; store "
                             "fewer or smaller arrays (float16 weights, fewer curves)")
        written = []
        if npz is not None:
            atomic_write(npz_path, npz)
            written.append(npz_path)
        elif npz_path.exists():
            npz_path.unlink()
        atomic_write(js_path, js)  # last: a result is complete once its JSON is there
        written.append(js_path)
        return written

    def items(self) -> list[str]:
        """Every stored item, ``"<chapter>/<name>"``, sorted."""
        if not self.root.exists():
            return []
        return sorted(f"{p.parent.name}/{p.stem}" for p in self.root.glob("*/*.json")
                      if p.parent.name != "smoke")
