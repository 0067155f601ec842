"""Online learning and lossless rehearsal (section 5.2, Tables 3-4 and the Omniglot rows): the
fusable methods that replay stored examples (none for online) beside each incoming example.

Each gradient step trains on the incoming batch (one example in the paper's protocol) together
with ``replay`` items drawn uniformly, with replacement, from the block's buffer. The batch always
holds ``B + replay`` items: while the buffer is empty (and always for ``online``) the replay places
hold copies of the incoming examples (place ``i`` the ``i mod B``-th), chosen on the device with
``torch.where`` (no branch on the buffer's fill). For one incoming example this gives exactly the
gradient and the batch-norm normalisation of the example alone (only BatchNorm's unbiased
running-variance factor ``n / (n - 1)`` sees the larger count). After the steps the incoming
examples are offered to the buffer by reservoir sampling (``RehearsalBuffer.offer``).
"""
from __future__ import annotations

import torch

from ..buffers import RehearsalBuffer
from .methods import LifelongMethod, ReplayBatch, StoragePlan, as_input, register

__all__ = ["ReplayMethod", "Online", "Rehearsal"]


def copies(xf: torch.Tensor, y: torch.Tensor, task: torch.Tensor, k: int):
    """``k`` copies of the incoming batch ``(S, B, ...)``: place ``i`` holds example ``i mod B``."""
    B = y.shape[1]
    if B == 1:
        return xf.expand(xf.shape[0], k, *xf.shape[2:]), y.expand(-1, k), task.expand(-1, k)
    pick = torch.arange(k, device=y.device) % B
    return xf[:, pick], y[:, pick], task[:, pick]


class ReplayMethod(LifelongMethod):
    """Shared by the fusable methods: a buffer (or none) replayed beside the incoming batch."""

    fusable = True
    buffer = None

    def replay_items(self, items) -> torch.Tensor:
        """Stored items -> images ``(S, k, C, H, W)`` in [0, 1] (rehearsal: the stored images)."""
        return as_input(items, self.learner.dtype)

    def replay_batch(self, xf, y, task) -> ReplayBatch:
        k = self.cfg.replay
        if k == 0:
            return ReplayBatch(xf, y, task)
        cx, cy, ct = copies(xf, y, task, k)
        if self.buffer is None:
            return ReplayBatch(torch.cat([xf, cx], 1), torch.cat([y, cy], 1), torch.cat([task, ct], 1))
        idx, filled = self.buffer.draw(k, self.gen)
        items, ys, ts = self.buffer.read(idx)
        xr = self.replay_items(items)
        extra = {"items": items, "replayed": xr, "filled": filled}
        xr = torch.where(filled, xr, cx)
        return ReplayBatch(torch.cat([xf, xr], 1), torch.cat([y, torch.where(filled, ys, cy)], 1),
                           torch.cat([task, torch.where(filled, ts, ct)], 1), extra)

    def state_dict(self) -> dict:
        d = super().state_dict()
        if self.buffer is not None:
            d["buffer"] = self.buffer.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        if self.buffer is not None:
            self.buffer.load_state_dict(d["buffer"])


def _transient(cfg, image_bits: int) -> dict:
    """The other examples of an incoming batch, held while it is learned."""
    n = max(0, int(getattr(cfg, "batch", 1)) - 1)
    return {"transient_items": n, "transient_bits": n * image_bits}


@register
class Online(ReplayMethod):
    """Online learning: the incoming example alone, nothing stored (Table 3's first row)."""

    name = "online"

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.budget:
            raise ValueError("online learning stores nothing: use budget=0")

    @classmethod
    def plan(cls, cfg, image_bits, image_shape, n_tasks, n_classes, task_images) -> StoragePlan:
        return StoragePlan(cls.name, 0, 0, "-", 0, 0, 0, True, **_transient(cfg, image_bits))


@register
class Rehearsal(ReplayMethod):
    """Lossless rehearsal: ``budget`` raw images in a reservoir buffer (section 5.2)."""

    name = "rehearsal"

    @classmethod
    def plan(cls, cfg, image_bits, image_shape, n_tasks, n_classes, task_images) -> StoragePlan:
        N = cfg.budget
        return StoragePlan(cls.name, N, N * image_bits, "image", image_bits, N, 0, True, **_transient(cfg, image_bits))

    def __init__(self, cfg, plan, setting, learner, lo, generator, init=None):
        super().__init__(cfg, plan, setting, learner, lo, generator, init)
        self.buffer = RehearsalBuffer(plan.capacity, setting.image_shape, groups=setting.S, device=setting.device)

    def store(self, x, xf, y, task) -> None:
        for i in range(y.shape[1]):  # in order: later examples of a batch are offered after earlier ones
            self.buffer.offer(x[:, i], y[:, i], task[:, i], self.gen)
