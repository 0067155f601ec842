"""Portable CPU arithmetic for the smoke profile: the same checked outputs on any x86-64 CPU.

By default PyTorch, MKL and oneDNN choose their code paths from the CPU they run on (AVX2, AVX-512,
...) and reductions are split over as many threads as there are cores, so a notebook executed on one
machine gives different low-order digits on another. The smoke profile's regression copies
(``tests/notebooks``) are compared digit for digit, so every smoke run fixes the arithmetic:

* environment (``recollect/portable.env``, read at process start, so it must be set by whoever starts
  Python: the Makefile for ``make test`` and ``make smoke``, :func:`apply_environment` before
  papermill starts a kernel, ``tests/conftest.py`` for a bare ``pytest``): PyTorch's baseline CPU
  kernels, MKL's compatible code path, libjpeg-turbo without SIMD, a fixed thread count;
* in the process (:func:`enforce`, called by ``context("smoke")``): oneDNN and NNPACK off (both pick
  kernels by CPU), torch's intra-op thread count fixed.

This module does not import torch at import time, so it can set the environment before the first
ATen op.
"""
from __future__ import annotations

import os
import pathlib

__all__ = ["ENV_FILE", "ENV", "THREADS", "environment", "apply_environment", "problems", "enforce", "settings"]

ENV_FILE = pathlib.Path(__file__).with_name("portable.env")


def _read(path: pathlib.Path) -> dict[str, str]:
    out = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.replace("_", "").isalnum() or " " in value:
            raise ValueError(f"{path.name}:{i}: expected NAME=value without spaces or inline comments, got {line!r}")
        out[name] = value
    return out


#: the environment of portable smoke runs, from ``portable.env``
ENV: dict[str, str] = _read(ENV_FILE)
#: torch's intra-op thread count in smoke runs
THREADS = int(ENV["OMP_NUM_THREADS"])


def environment(base: dict | None = None) -> dict:
    """``base`` (default ``os.environ``) with the portable settings put in (for a subprocess)."""
    env = dict(os.environ if base is None else base)
    env.update(ENV)
    return env


def apply_environment(override: bool = True) -> None:
    """Put the portable settings into this process's environment, for the kernels and subprocesses it
    starts (for this process itself they only take effect if no ATen op has run yet). With
    ``override=False`` a variable already set is kept (``context("smoke")`` then says if it breaks
    portability)."""
    for name, value in ENV.items():
        if override or name not in os.environ:
            os.environ[name] = value


def problems() -> list[str]:
    """What keeps this process's CPU arithmetic from being portable (empty when all is in force)."""
    import torch

    out = []
    cap = torch.backends.cpu.get_cpu_capability()
    if cap != "DEFAULT":
        out.append(f"PyTorch's CPU kernels use {cap} (ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY')!r} "
                   "when Python started; it must be 'default')")
    for name in ("MKL_CBWR", "JSIMD_FORCENONE"):
        if os.environ.get(name) != ENV[name]:
            out.append(f"{name}={os.environ.get(name)!r}, must be {ENV[name]!r}")
    return out


def enforce() -> None:
    """Check the environment and fix what can be fixed in the process (oneDNN and NNPACK off, the
    thread count). Raises ``RuntimeError`` saying how to start Python when the environment is wrong."""
    import torch

    bad = problems()
    if bad:
        raise RuntimeError(
            "the smoke profile needs portable CPU arithmetic, set in the environment that starts Python: "
            + "; ".join(bad) + ". Run it through `make test` / `make smoke` / `python -m recollect run CHAPTER "
            "--profile smoke` (they set it), or start Python with the settings of recollect/portable.env, e.g. "
            "`env $(grep -v '^#' recollect/portable.env | xargs) jupyter lab`.")
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    torch.set_num_threads(THREADS)


def settings() -> dict:
    """The arithmetic settings in force, for a chapter's provenance block."""
    import torch

    return {"PyTorch CPU kernels": torch.backends.cpu.get_cpu_capability().lower(),
            "MKL": f"MKL_CBWR={os.environ.get('MKL_CBWR', 'unset')}",
            "oneDNN": "on" if torch.backends.mkldnn.enabled else "off",
            "NNPACK": "on" if torch._C._get_nnpack_enabled() else "off",
            "threads": torch.get_num_threads(),
            "JPEG SIMD": "off" if os.environ.get("JSIMD_FORCENONE") == "1" else "on"}
