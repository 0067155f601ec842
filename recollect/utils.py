"""Seeds, devices, threads and timing: the few things every layer needs."""
from __future__ import annotations

import hashlib
import numbers
import os
import pathlib
import random
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["threads", "seed_everything", "pick_device", "generator", "Timer", "device_name", "derive_seed",
           "atomic_write"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so that a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts) -> int:
    """The seed of one role of one run, e.g. ``derive_seed("mnist", "student", "lenet", 0)``: the first
    8 bytes of the sha256 of the parts (strings and integers, joined by a separator that cannot occur
    in them), shifted into ``[0, 2**63)``. The same on every process, machine and Python version
    (unlike ``hash()``), and different roles get unrelated seeds (no two share one by accident)."""
    if not parts:
        raise ValueError("derive_seed needs at least one part, e.g. derive_seed('mnist', 'teacher', 0)")
    words = []
    for p in parts:
        if isinstance(p, bool) or not isinstance(p, (str, numbers.Integral)):
            raise ValueError(f"derive_seed takes strings and integers, got {p!r} ({type(p).__name__}); "
                             "pass run indices as int and names as str")
        if isinstance(p, str) and "\x1f" in p:
            raise ValueError(f"derive_seed: a part may not contain the unit separator \\x1f, got {p!r}")
        words.append(f"str:{p}" if isinstance(p, str) else f"int:{int(p)}")
    digest = hashlib.sha256("\x1f".join(words).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def generator(seed: int, device="cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed`` (sampling code takes one explicitly)."""
    return torch.Generator(device=device).manual_seed(int(seed))


def pick_device(device: str | None = "auto") -> torch.device:
    """``"auto"``: the GPU when one is present, else the CPU. Anything else is passed to torch."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is visible; use device='cpu' or 'auto'")
    return dev


def device_name(device) -> str:
    """A human-readable name of the device, e.g. 'NVIDIA H200' or 'CPU (2 threads)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``; synchronises CUDA so GPU time is counted."""

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        return False


@contextmanager
def threads(n: int | None):
    """Run a block with ``n`` CPU threads (``None``/0: leave as is), restoring the count afterwards.
    Tiny single-example steps run fastest on one thread of a small or loaded machine."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a kill leaves the old file or
    the new one, never half of one."""
    path = pathlib.Path(path)
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
