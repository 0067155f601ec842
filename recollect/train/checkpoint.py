"""The one checkpoint mechanism of every trainer: by time, on local disk, with every random state.

A paper-profile item that runs longer than one command (at most ten minutes on the GPU host) saves
its state about every ``every`` seconds (90 by default) at its next natural boundary (an epoch, a
block of student steps, a task), and the next command of the same session continues from there.
Checkpoints are machine-local and ephemeral: they live under the job's checkpoint directory and are
deleted when the item's result is stored; no result depends on one surviving.

A checkpoint holds whatever state the trainer hands over (models, optimizers, buffers, counters) and,
always, the random states: Python's, NumPy's, torch's CPU and CUDA default generators, and every
explicit ``torch.Generator`` the trainer names, so a resumed run continues exactly as an unbroken
one would. Beside it, ``<name>.seconds`` holds the seconds the run had taken up to the checkpoint
(over every command so far), so a resumed item's result records its whole time
(:func:`prior_seconds`), not only its last command's.
"""
from __future__ import annotations

import io
import os
import pathlib
import random
import time

import numpy as np
import torch

from ..utils import atomic_write

__all__ = ["Checkpointer", "rng_state", "set_rng_state", "prior_seconds"]


def rng_state(generators: dict | None = None) -> dict:
    """Every random state: Python, NumPy, torch CPU, torch CUDA (when present) and ``generators``."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
          "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
          "generators": {k: g.get_state() for k, g in (generators or {}).items()}}
    return st


def set_rng_state(st: dict, generators: dict | None = None) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if st.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
    for k, g in (generators or {}).items():
        if k not in st["generators"]:
            raise ValueError(f"the checkpoint has no state for generator {k!r}; it belongs to another run")
        g.set_state(st["generators"][k])


def _seconds_file(path: pathlib.Path) -> pathlib.Path:
    return path.with_suffix(".seconds")


def prior_seconds(path: str | os.PathLike | None) -> float:
    """The seconds the run checkpointed at ``path`` (a job's checkpoint path, as given to
    :class:`Checkpointer`) had taken up to its checkpoint, over every earlier command; 0 when there is
    no checkpoint to resume."""
    if path is None:
        return 0.0
    ckpt = pathlib.Path(path).with_suffix(".ckpt")
    f = _seconds_file(ckpt)
    if not ckpt.exists() or not f.exists():
        return 0.0
    try:
        return float(f.read_text().strip())
    except ValueError:
        return 0.0


class Checkpointer:
    """``ck = Checkpointer(path, every=90)``; ``state = ck.load(generators)`` (None when there is
    none); at each boundary ``ck.maybe_save(lambda: state, generators)``; ``ck.done()`` when finished.

    ``path`` None disables it (smoke runs, probes): every method is then a no-op.
    """

    def __init__(self, path: str | os.PathLike | None, every: float = 90.0):
        self.path = None if path is None else pathlib.Path(path).with_suffix(".ckpt")
        self.every = float(every)
        self._last = time.monotonic()
        self._start = self._last
        self.prior = 0.0  # seconds of the earlier commands, up to the checkpoint this one resumed from
        self.saves = 0

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def load(self, generators: dict | None = None):
        """The saved state (random states restored), or None."""
        if self.path is None or not self.path.exists():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as e:  # a torn file: start over rather than fail
            print(f"warning: checkpoint {self.path.name} could not be read ({e}); starting from scratch")
            return None
        set_rng_state(blob["rng"], generators)
        self.prior = prior_seconds(self.path)
        self._last = time.monotonic()
        return blob["state"]

    def maybe_save(self, state_fn, generators: dict | None = None, force: bool = False) -> bool:
        """Save ``state_fn()`` when ``every`` seconds have passed since the last save (or ``force``)."""
        if self.path is None or (not force and time.monotonic() - self._last < self.every):
            return False
        buf = io.BytesIO()
        torch.save({"state": state_fn(), "rng": rng_state(generators)}, buf)
        atomic_write(self.path, buf.getvalue())
        self._last = time.monotonic()
        atomic_write(_seconds_file(self.path), f"{self.prior + self._last - self._start:.1f}\n".encode())
        self.saves += 1
        return True

    def done(self) -> None:
        """The run finished: its checkpoint is no longer needed."""
        if self.path is not None:
            for p in (self.path, _seconds_file(self.path)):
                if p.exists():
                    p.unlink()
