"""One training step of a grouped model, eager or captured in a CUDA graph: ``TrainStep`` now lives in
:mod:`recollect.train.capture` (with ``CapturedStep`` and ``SyncCounter``); re-exported here for
``bench/speed.py`` and older imports."""
from __future__ import annotations

from .capture import TrainStep

__all__ = ["TrainStep"]
