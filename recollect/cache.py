"""The machine-local working cache, under ``$RECOLLECT_CACHE`` (default ``~/.cache/recollect``); nothing
of lasting value lives here:

* ``results/``: smoke-profile results, in the same portable format as paper results
  (``recollect.results``), so re-rendering a chapter at the smoke profile does not retrain and the
  tests exercise the encoding;
* ``checkpoints/``: checkpoints of long items (``recollect.train.checkpoint``), continued by the next
  command on the same machine;
* ``session-results/``: on a GPU host, the paper results of the session's earlier commands, so a
  later command can build on them (``recollect.queue``).

Paper-profile results live in the repository (``results/``).
"""
from __future__ import annotations

import os
import pathlib

__all__ = ["CACHE_ENV", "cache_dir", "smoke_results_dir", "checkpoints_dir", "session_results_dir"]

CACHE_ENV = "RECOLLECT_CACHE"


def cache_dir() -> pathlib.Path:
    """``$RECOLLECT_CACHE`` or ``~/.cache/recollect``."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "recollect")


def smoke_results_dir() -> pathlib.Path:
    return cache_dir() / "results"


def checkpoints_dir() -> pathlib.Path:
    return cache_dir() / "checkpoints"


def session_results_dir() -> pathlib.Path:
    return cache_dir() / "session-results"
