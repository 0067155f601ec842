"""On-disk results cache keyed by an experiment's config and the code version that produced it.

Every experiment of the book writes its result here, atomically (a temporary file then
``os.replace``), so a killed run resumes where it stopped, a paper run can be completed over several
commands of at most ten minutes each, and re-rendering a chapter never retrains. Long experiments
also keep *checkpoints* (partial state) under the same key.

The directory is ``$RECOLLECT_CACHE`` or ``~/.cache/recollect/results``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import tempfile

import torch

__all__ = ["CACHE_ENV", "CODE_VERSION", "cache_dir", "config_key", "ResultCache"]

CACHE_ENV = "RECOLLECT_CACHE"
#: bump when a change alters what an experiment computes: old entries are then not reused
CODE_VERSION = "1"


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "recollect" / "results")


def _canonical(obj):
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.device):
        return str(obj)
    raise TypeError(f"config values must be JSON-like (str, int, float, bool, None, list, dict); got {type(obj).__name__}: {obj!r}")


def config_key(name: str, config: dict, version: str = CODE_VERSION) -> str:
    """``name-<hash>``: the hash covers the canonical JSON of ``config`` and the code version."""
    blob = json.dumps({"config": _canonical(config), "version": version}, sort_keys=True)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ResultCache:
    """``get``/``put`` results and checkpoints by key. Values are anything ``torch.save`` takes."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = pathlib.Path(root) if root is not None else cache_dir()

    def _path(self, key: str, kind: str) -> pathlib.Path:
        return self.root / f"{key}.{kind}.pt"

    def _load(self, path):
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # a torn or foreign file: say so, keep it for inspection, recompute
            bad = path.with_suffix(".corrupt")
            os.replace(path, bad)
            print(f"warning: cache entry {path.name} could not be read ({e}); moved to {bad.name}, recomputing")
            return None

    def get(self, key: str):
        return self._load(self._path(key, "result"))

    def put(self, key: str, value) -> None:
        buf = io.BytesIO()
        torch.save(value, buf)
        _atomic_write(self._path(key, "result"), buf.getvalue())
        ck = self._path(key, "checkpoint")
        if ck.exists():
            ck.unlink()

    def get_checkpoint(self, key: str):
        return self._load(self._path(key, "checkpoint"))

    def put_checkpoint(self, key: str, state) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        _atomic_write(self._path(key, "checkpoint"), buf.getvalue())

    def memo(self, name: str, config: dict, fn):
        """Return the cached result of ``fn()`` for (name, config), computing and storing it once."""
        key = config_key(name, config)
        hit = self.get(key)
        if hit is not None:
            return hit
        value = fn()
        self.put(key, value)
        return value
