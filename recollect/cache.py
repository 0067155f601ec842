"""The working cache: where smoke-profile results (and nothing else of value) are kept on this machine.

Smoke runs write their results, in the same portable format as paper results
(``recollect.results``), under ``$RECOLLECT_CACHE/results`` (default ``~/.cache/recollect/results``),
so re-rendering a chapter at the smoke profile does not retrain and the tests exercise the encoding.
Paper-profile results live in the repository (``results/``); checkpoints of long items live under
``~/.cache/recollect/checkpoints`` (``recollect.train.checkpoint``).
"""
from __future__ import annotations

import os
import pathlib

__all__ = ["CACHE_ENV", "cache_dir"]

CACHE_ENV = "RECOLLECT_CACHE"


def cache_dir() -> pathlib.Path:
    """``$RECOLLECT_CACHE`` or ``~/.cache/recollect/results``."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "recollect" / "results")
