"""The recollection generator of sections 4.3-4.4 as a lifelong method: its whole cycle in one object.

Per incoming batch (one example in the paper's protocol; ``recollect.train.lifelong`` fuses the
reasoning model of this block with the other fusable blocks of a run):

1. *Freeze* (``prepare``): the decoder's parameters are copied into a second autoencoder right
   before the example arrives (section 4.3: "we freeze decoder parameters right before each
   incoming experience").
2. *Recollect* (``replay_batch``, every gradient step): ``replay`` codes drawn uniformly from the
   :class:`~recollect.buffers.RecollectionBuffer` are decoded by the *frozen* decoder into
   recollections (images in [0, 1]) that keep their stored class and task; while the buffer is
   empty the places hold copies of the incoming example (``recollect.train.rehearsal``).
3. *Consolidate* (``own_loss``): the same batch trains the reasoning model (the harness) and the
   autoencoder itself (dual purpose, section 4.3). ``ae_replay="autoencode"`` (default): the
   autoencoder reconstructs the whole batch (each item is input and target, through the
   straight-through Gumbel-softmax; BCE, ``recollect.train.autoencoder.reconstruction_loss``),
   tying the current autoencoder to what the frozen decoder produced. ``ae_replay="code"``: the
   decoder learns to map each stored code to its frozen recollection, and the whole autoencoder
   reconstructs the incoming example (while the buffer is empty, the incoming example alone).
4. *Store* (``store``): the example's code under the autoencoder just updated on it ("when the
   input was first experienced"; the mode of the categorical posterior unless ``encode_sample``)
   is offered to the buffer by reservoir sampling (section 5.2), packed in ``packed_bits(c, l)``
   bits (``recollect.codes``).

Storage: ``recollections_that_fit(budget * image_bits, packed_bits(c, l))`` codes; with
``budget_kind="total"`` the autoencoder's parameters at 32 bits are charged too (Table 4).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .. import accounting, grouped
from ..buffers import RecollectionBuffer
from ..codes import packed_bits
from ..models import CategoricalVAE, vae_param_bits
from .autoencoder import reconstruction_loss
from .common import noise_generator
from .methods import ReplayBatch, StoragePlan, init_groups, register
from .rehearsal import ReplayMethod, _transient

__all__ = ["Recollection"]


@register
class Recollection(ReplayMethod):
    """The recollection generator: a categorical VAE with code ``cfg.code = (c, l)`` and its buffer."""

    name = "recollection"

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.code is None or len(cfg.code) != 2:
            raise ValueError("the recollection generator needs code=(c, l), e.g. (62, 2)")

    @classmethod
    def plan(cls, cfg, image_bits, image_shape, n_tasks, n_classes, task_images) -> StoragePlan:
        N = cfg.budget
        budget_bits = N * image_bits
        c, l = cfg.code
        bits = packed_bits(c, l)
        fixed = vae_param_bits(c, l, tuple(image_shape)) if cfg.budget_kind == "total" else 0
        tr = _transient(cfg, image_bits)
        try:
            cap = accounting.recollections_that_fit(budget_bits, bits, fixed)
        except ValueError as e:
            return StoragePlan(cls.name, N, budget_bits, "code", bits, 0, fixed, False, str(e), **tr)
        return StoragePlan(cls.name, N, budget_bits, "code", bits, cap, fixed, cap >= 1,
                           "" if cap >= 1 else "not one code fits the budget", **tr)

    def __init__(self, cfg, plan, setting, learner, lo, generator, init=None):
        super().__init__(cfg, plan, setting, learner, lo, generator, init)
        c, l = cfg.code
        dev = setting.device
        self.vae = self._build_vae(c, l, init).to(device=dev, dtype=learner.dtype)
        self.vae.train()
        self.frozen = copy.deepcopy(self.vae)
        for p in self.frozen.parameters():
            p.requires_grad_(False)
        self._dec = list(self.vae.dec.parameters())
        self._frozen_dec = list(self.frozen.dec.parameters())
        self.ae_opt = grouped.make_optimizer(self.vae.parameters(), cfg.optimizer, cfg.ae_lr)
        self.buffer = RecollectionBuffer(plan.capacity, c, l, groups=setting.S, device=dev,
                                         n_classes=setting.n_classes, n_tasks=setting.n_tasks)
        self.noise = noise_generator(generator, dev)

    def _build_vae(self, c, l, init):
        shape, S = self.setting.image_shape, self.setting.S
        build = lambda: CategoricalVAE(c, l, shape, groups=1)  # noqa: E731
        if init is None:
            return init_groups(build, self.setting.seeds)
        lead = next(v for v in init.values() if isinstance(v, torch.Tensor)).shape[0]
        if lead == S:
            vae = CategoricalVAE(c, l, shape, groups=S)
            vae.load_state_dict(init)
            return vae
        if lead != 1:
            raise ValueError(f"ae_init holds {lead} groups; give one group (copied to all) or one per seed ({S})")
        one = build()
        one.load_state_dict(init)
        return one if S == 1 else grouped.stack_groups([one] * S)

    def optimizers(self) -> list:
        return [self.ae_opt]

    # ---------------------------------------------------------------- the cycle
    def freeze_decoder(self) -> None:
        """Section 4.3: freeze the decoder right before each incoming experience (one multi-tensor copy)."""
        with torch.no_grad():
            torch._foreach_copy_(self._frozen_dec, self._dec)

    def prepare(self, x, xf, y, task) -> None:
        self.freeze_decoder()

    def replay_items(self, codes) -> torch.Tensor:
        """Recollections: stored codes decoded by the frozen decoder (no validation: the codes come
        from this block's own encoder)."""
        return self.frozen.decode_trusted(codes)

    def own_loss(self, batch: ReplayBatch, xf: torch.Tensor) -> torch.Tensor:
        """The autoencoder's per-group loss ``(S,)`` on the block's batch (dual purpose, section 4.3)."""
        if self.cfg.ae_replay == "autoencode" or not batch.extra:
            return reconstruction_loss(self.vae, batch.x, self.noise)
        new = reconstruction_loss(self.vae, xf, self.noise)
        logits = self.vae.decode_logits(batch.extra["items"])
        rl = F.binary_cross_entropy_with_logits(logits, batch.extra["replayed"], reduction="none").flatten(2).mean(-1)
        v = batch.extra["filled"].to(rl.dtype)
        return (new + v * rl.sum(1)) / (1 + v * rl.shape[1])

    @torch.no_grad()
    def store(self, x, xf, y, task) -> None:
        codes = self.vae.encode(xf, self.noise, sample=self.cfg.encode_sample)  # (S, B, c)
        for i in range(y.shape[1]):
            self.buffer.offer(codes[:, i], y[:, i], task[:, i], self.gen)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        d = super().state_dict()
        d.update(vae=self.vae.state_dict(), ae_opt=self.ae_opt.state_dict())
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.vae.load_state_dict(d["vae"])
        self.ae_opt.load_state_dict(d["ae_opt"])
