"""Per-epoch checkpoints of one cached training run, so a long paper run resumes where it stopped."""
from __future__ import annotations

import time

__all__ = ["EpochCheckpoint"]


class EpochCheckpoint:
    """Restores (model, optimizer, shuffle generator, ``state``) from the cache's checkpoint of
    ``key`` if there is one; :meth:`end_epoch` then counts the epoch, adds the elapsed seconds to
    ``state["seconds"]`` and writes the checkpoint (not at the smoke profile, which never resumes).
    ``state`` must hold ``epoch`` and ``seconds``; use ``ckpt.state`` after construction."""

    def __init__(self, ctx, key: str, model, optimizer, shuffle, state: dict):
        self.ctx, self.key, self.model, self.optimizer, self.shuffle = ctx, key, model, optimizer, shuffle
        ck = ctx.cache.get_checkpoint(key)
        if ck is not None:
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["opt"])
            shuffle.set_state(ck["shuffle"])
            state = ck["state"]
        self.state = state
        self._clock = time.perf_counter()

    def end_epoch(self, epoch: int) -> bool:
        """Epoch ``epoch`` (0-based) is done. Returns True when a checkpoint was written."""
        self.state["epoch"] = epoch + 1
        now = time.perf_counter()
        self.state["seconds"] += now - self._clock
        self._clock = now
        if self.ctx.smoke:
            return False
        self.ctx.cache.put_checkpoint(self.key, dict(model=self.model.state_dict(), opt=self.optimizer.state_dict(),
                                                     shuffle=self.shuffle.get_state(), state=self.state))
        return True
