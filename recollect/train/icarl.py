"""iCaRL (Rebuffi, Kolesnikov, Sperl & Lampert 2017) for G fused models: herding exemplars and
nearest-mean-of-exemplars classification, in the single-pass stream of section 5.2, as a lifelong
method (:class:`ICaRL`).

* **Exemplar budget.** A total of ``budget`` exemplars: after a task ends, every class seen so far
  keeps ``m = budget // classes_seen`` exemplars (iCaRL's ``m = K / t``); older classes keep the
  first ``m`` of their herding order (iCaRL's ReduceExemplarSet). With fewer memories than classes
  (``m = 0``) iCaRL cannot run: :func:`icarl_runnable` says so up front.
* **Herding** (iCaRL's ConstructExemplarSet): for each class of the finished task, exemplars are
  picked greedily so that the running mean of their L2-normalised features stays closest to the
  class mean. Like iCaRL (and GEM's re-implementation of it), the examples of the current task are
  at hand until the task ends (the stream is single-pass; only these are used for herding).
* **Training** (as GEM's re-implementation for the single-pass setting): task-masked
  cross-entropy on the incoming batch plus ``reg`` times a distillation loss on exemplars, whose
  targets are the network's outputs recorded at the end of the last task (KL divergence over each
  exemplar's task classes). Two samplings (``LifelongConfig.icarl_distill``):
  ``"per_class"`` is GEM's code: every update draws one exemplar of every class of every old task
  (a slot uniform among the class's current exemplars), and the loss sums over old tasks the mean
  over each task's classes, the exemplars in a forward pass of their own; ``"uniform"`` (this
  harness's earlier variant) draws ``replay`` exemplars uniformly from the whole store, in the
  incoming batch's forward pass, the loss their mean.
* **Features** (``LifelongConfig.icarl_features``): ``"penultimate"`` (iCaRL's paper: the
  L2-normalised penultimate layer, for herding and class means) or ``"logits"`` (GEM's code: the
  network's outputs, unnormalised; herding on the task's own outputs, class means of all outputs).
* **Classification**: the nearest mean of exemplars among the classes of the example's task
  (task-aware) or among all classes with exemplars (class-incremental). Before a task's classes
  have exemplars (e.g. future tasks, for forward transfer) the network's own outputs are used.
* **Storage**: ``budget`` exemplars stay stored between tasks, but the whole current task is held
  until it ends (the herding needs it): :func:`recollect.train.lifelong.plan_storage` counts it as
  ``transient_items`` (2,500 images on a CIFAR-100 task).

Differences from GEM's code, kept on purpose: older classes' exemplar sets are reduced to the new
``m`` (iCaRL's ReduceExemplarSet; GEM's code keeps the larger old sets for its class means, so it
stores more than its budget); herding, distillation targets and class means are computed in
evaluation mode (GEM's code runs them in training mode, where BatchNorm uses batch statistics and
updates its running ones).

The stream is shared by all groups, so the exemplar *layout* (class rows, ``m``, valid slots) is
shared; the exemplars themselves differ per group (herding uses each model's features).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..grouped import grouped_cross_entropy
from .capture import backward_step
from .common import masked_logits
from .methods import LifelongMethod, StoragePlan, as_input, register
from .probe import tick

__all__ = ["icarl_runnable", "herding", "features", "ExemplarStore", "distillation_loss", "ICaRL",
           "FEATURES", "DISTILL"]

#: what herding and the class means use (module docstring)
FEATURES = ("penultimate", "logits")
#: how the exemplars of the distillation loss are drawn (module docstring)
DISTILL = ("uniform", "per_class")


def icarl_runnable(budget: int, n_classes_seen: int) -> tuple[bool, str]:
    """Whether iCaRL can keep at least one exemplar per class: ``(ok, reason)``."""
    if budget < n_classes_seen:
        return False, (f"iCaRL keeps budget // classes = {budget} // {n_classes_seen} = 0 exemplars per class: "
                       f"fewer memories ({budget}) than classes ({n_classes_seen}), so nearest-mean-of-exemplars "
                       f"classification cannot cover every class")
    return True, ""


def herding(features: torch.Tensor, valid: torch.Tensor, m: int) -> torch.Tensor:
    """iCaRL's herding, batched: features ``(G, K, n, D)`` (L2-normalised) of K classes padded to n
    examples, ``valid (K, n)`` marks real examples. Returns indices ``(G, K, m)`` into the n axis, in
    selection order; ``-1`` once a class has run out of examples."""
    G, K, n, D = features.shape
    v = valid.to(features.dtype)
    count = v.sum(-1).clamp_min(1)  # (K,)
    mu = (features * v[None, :, :, None]).sum(2) / count[None, :, None]  # (G, K, D)
    taken = (~valid).unsqueeze(0).expand(G, K, n).clone()
    acc = torch.zeros(G, K, D, dtype=features.dtype, device=features.device)
    out = torch.full((G, K, m), -1, dtype=torch.long, device=features.device)
    inf = torch.tensor(float("inf"), dtype=features.dtype, device=features.device)
    for j in range(m):
        cand = (acc.unsqueeze(2) + features) / (j + 1)  # (G, K, n, D)
        cost = (mu.unsqueeze(2) - cand).norm(dim=-1)
        cost = torch.where(taken, inf, cost)
        best = cost.argmin(-1)  # (G, K)
        ok = ~taken.gather(2, best.unsqueeze(-1)).squeeze(-1)
        out[:, :, j] = torch.where(ok, best, torch.full_like(best, -1))
        pick = features.gather(2, best[..., None, None].expand(G, K, 1, D)).squeeze(2)
        acc = acc + pick * ok.unsqueeze(-1).to(features.dtype)
        taken.scatter_(2, best.unsqueeze(-1), True)
    return out


def distillation_loss(logits: torch.Tensor, target_logits: torch.Tensor, task: torch.Tensor,
                      class_mask: torch.Tensor | None, reduction: str = "mean") -> torch.Tensor:
    """Per-group KL(softmax(target) || softmax(logits)) over each exemplar's task classes: ``(G,)``,
    the mean over exemplars, or ``(G, n)`` per exemplar with ``reduction="none"``."""
    if class_mask is not None:
        keep = class_mask[task]
        logits = logits.masked_fill(~keep, -1e9)
        target_logits = target_logits.masked_fill(~keep, -1e9)
    dt = torch.promote_types(target_logits.dtype, torch.float32)
    p = F.softmax(target_logits.to(dt), -1)
    kl = (p * (F.log_softmax(target_logits.to(dt), -1) - F.log_softmax(logits.to(dt), -1))).sum(-1)
    return kl if reduction == "none" else kl.mean(-1)


class ExemplarStore:
    """The exemplar sets of G groups: images ``x (G, R, m0, C, H, W)`` uint8 with one row per class
    (classes in order of appearance), slots in herding order; ``m0`` = exemplars per class after
    the first task (``m`` only decreases). ``targets (G, R, m0, K)`` are the distillation targets."""

    def __init__(self, budget: int, classes: list[int], first_task_classes: int, image_shape,
                 n_classes: int, groups: int, device="cpu", feature: str = "penultimate"):
        ok, reason = icarl_runnable(budget, len(classes))
        if not ok:
            raise ValueError(reason)
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        self.feature = feature
        self.budget, self.n_classes, self.groups = int(budget), int(n_classes), int(groups)
        self.m0 = max(1, budget // max(1, first_task_classes))
        self.classes = torch.tensor(classes, dtype=torch.long, device=device)
        self.row_of = torch.full((n_classes,), -1, dtype=torch.long, device=device)
        self.row_of[self.classes] = torch.arange(len(classes), device=device)
        R = len(classes)
        self.x = torch.zeros(groups, R, self.m0, *image_shape, dtype=torch.uint8, device=device)
        self.targets = torch.zeros(groups, R, self.m0, n_classes, device=device)
        self.task = torch.zeros(R, dtype=torch.long, device=device)
        self.filled = torch.zeros(R, dtype=torch.long, device=device)  # herded exemplars per class row
        self.seen = torch.zeros(R, dtype=torch.bool, device=device)
        self.m = 0
        self.means = None  # (G, R, D) normalised class means of the current model

    # ------------------------------------------------------------------ layout
    @property
    def valid(self) -> torch.Tensor:
        """``(R, m0)`` bool: slot j of class row r holds a current exemplar."""
        j = torch.arange(self.m0, device=self.filled.device)
        return self.seen.unsqueeze(1) & (j.unsqueeze(0) < self.filled.clamp(max=self.m).unsqueeze(1))

    def __len__(self) -> int:
        return int(self.valid.sum())

    def class_has_exemplars(self) -> torch.Tensor:
        """``(n_classes,)`` bool."""
        has = torch.zeros(self.n_classes, dtype=torch.bool, device=self.classes.device)
        has[self.classes] = self.seen & (self.filled.clamp(max=self.m) > 0)
        return has

    # ------------------------------------------------------------------ end of a task
    @torch.no_grad()
    def update(self, model, x: torch.Tensor, y: torch.Tensor, t: int, batch_size: int = 1000) -> None:
        """After task t: herd exemplars for its classes (from its examples x, y), shrink older sets
        to the new ``m``, then refresh targets and class means with the current model."""
        task_classes = torch.unique(y)
        rows = self.row_of[task_classes]
        if bool((rows < 0).any()):
            raise ValueError("the task holds classes the exemplar store was not built for")
        self.seen[rows] = True
        self.task[rows] = t
        self.m = self.budget // int(self.seen.sum())
        if self.feature == "logits":  # GEM's code: herding on the outputs of the task's own classes
            feats = features(model, x, batch_size, "logits")[..., task_classes]
        else:
            feats = features(model, x, batch_size)  # (G, N, D)
        # pad the task's classes to a (K, n) table of example indices
        order = torch.argsort(y, stable=True)
        ys = y[order]
        counts = torch.bincount(ys - ys[0]) if len(ys) else torch.zeros(0, dtype=torch.long)
        counts = counts[counts > 0]
        n = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        k_idx = torch.repeat_interleave(torch.arange(len(counts), device=y.device), counts)
        pos = torch.arange(len(ys), device=y.device) - starts[k_idx]
        table = torch.full((len(counts), n), -1, dtype=torch.long, device=y.device)
        table[k_idx, pos] = order
        valid = table >= 0
        G = feats.shape[0]
        F_ = feats[:, table.clamp_min(0)]  # (G, K, n, D)
        sel = herding(F_, valid, min(self.m, self.m0))  # (G, K, m)
        ok = sel >= 0
        idx = table.unsqueeze(0).expand(G, -1, -1).gather(2, sel.clamp_min(0))  # (G, K, m)
        imgs = x[idx.clamp_min(0)]  # (G, K, m, C, H, W)
        msel = sel.shape[2]
        self.x[:, rows, :msel] = imgs
        self.filled[rows] = ok[0].sum(-1)  # the same count in every group (counts are per class)
        self.refresh(model, batch_size)

    @torch.no_grad()
    def refresh(self, model, batch_size: int = 1000) -> None:
        """Recompute distillation targets and normalised class means of all stored exemplars."""
        G, R, m0 = self.x.shape[:3]
        flat = self.x.reshape(G, R * m0, *self.x.shape[3:])
        dtype = _dtype(model)
        was = model.training
        model.eval()
        logits, feats = [], []
        for s in range(0, R * m0, batch_size):
            lo, fe = model(as_input(flat[:, s:s + batch_size], dtype), return_features=True)
            logits.append(lo.float() if lo.dtype != torch.float64 else lo)
            feats.append(lo if self.feature == "logits" else F.normalize(fe.to(logits[-1].dtype), dim=-1))
        model.train(was)
        self.targets = torch.cat(logits, 1).reshape(G, R, m0, -1)
        fe = torch.cat(feats, 1).reshape(G, R, m0, -1)
        v = self.valid.to(fe.dtype)
        mean = (fe * v[None, :, :, None]).sum(2) / v.sum(-1).clamp_min(1)[None, :, None]
        self.means = mean if self.feature == "logits" else F.normalize(mean, dim=-1)

    # ------------------------------------------------------------------ training and prediction
    def sample(self, n: int, generator: torch.Generator, valid_flat: torch.Tensor):
        """``n`` exemplars per group uniformly from the valid slots (indices ``valid_flat``, shared):
        ``(x (G, n, C, H, W), targets (G, n, K), task (G, n))``."""
        G = self.groups
        pick = torch.randint(0, len(valid_flat), (G, n), generator=generator, device=generator.device)
        flat_idx = valid_flat.to(pick.device)[pick].to(self.x.device)  # (G, n) into R * m0
        R, m0 = self.x.shape[1:3]
        g = torch.arange(G, device=self.x.device).unsqueeze(1)
        xs = self.x.reshape(G, R * m0, *self.x.shape[3:])[g, flat_idx]
        tg = self.targets.reshape(G, R * m0, -1)[g, flat_idx]
        task = self.task[flat_idx // m0]
        return xs, tg, task

    def sample_per_class(self, rows: torch.Tensor, m: int, generator: torch.Generator):
        """GEM's code: one exemplar of every class row in ``rows`` ``(R,)``, per group, its slot
        uniform among the class's first ``min(filled, m)`` exemplars; on the device, no sync:
        ``(x (G, R, C, H, W), targets (G, R, K), task (G, R))``."""
        G = self.groups
        n = self.filled[rows].clamp(max=m).clamp(min=1).to(torch.float64)  # (R,)
        u = torch.rand((G, rows.shape[0]), dtype=torch.float64, generator=generator, device=generator.device)
        slot = torch.minimum((u * n).long(), (n.long() - 1))
        g = torch.arange(G, device=self.x.device).unsqueeze(1)
        r = rows.unsqueeze(0)
        return self.x[g, r, slot], self.targets[g, r, slot], self.task[rows].expand(G, -1)

    @torch.no_grad()
    def nme_scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Negative distances of features ``(G, N, D)`` (normalised here for ``"penultimate"``; the
        logits for ``"logits"``) to the class means: ``(G, N, K)``, ``-inf`` for classes without
        exemplars."""
        G, N, _ = feats.shape
        out = torch.full((G, N, self.n_classes), float("-inf"), device=feats.device)
        if self.means is None:
            return out
        f = feats.to(self.means.dtype)
        if self.feature != "logits":
            f = F.normalize(f, dim=-1)
        d = torch.cdist(f, self.means)  # (G, N, R)
        has = self.seen & (self.filled.clamp(max=self.m) > 0)
        d = torch.where(has.view(1, 1, -1), -d, torch.full_like(d, float("-inf")))
        out[:, :, self.classes] = d.to(out.dtype)
        return out

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("x", "targets", "task", "filled", "seen", "m", "means")}

    def load_state_dict(self, d: dict) -> None:
        """Restore :meth:`state_dict`, copying into the existing tensors where the shapes agree (so a
        captured step keeps reading the same memory) and never aliasing ``d``'s tensors."""
        for k, v in d.items():
            cur = getattr(self, k, None)
            if isinstance(v, torch.Tensor):
                if isinstance(cur, torch.Tensor) and cur.shape == v.shape and cur.dtype == v.dtype:
                    cur.copy_(v)
                else:
                    setattr(self, k, v.to(self.classes.device, copy=True))
            else:
                setattr(self, k, v)


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def features(model, x: torch.Tensor, batch_size: int = 1000, kind: str = "penultimate") -> torch.Tensor:
    """Features ``(G, N, D)`` of shared images x ``(N, C, H, W)`` in evaluation mode: the L2-normalised
    penultimate layer (``kind="penultimate"``, iCaRL's paper) or the logits (``"logits"``, GEM's code)."""
    was = model.training
    model.eval()
    G = model.groups
    dtype = _dtype(model)
    out = []
    for s in range(0, len(x), batch_size):
        xb = as_input(x[s:s + batch_size], dtype)
        lo, fe = model(xb.unsqueeze(0).expand(G, *xb.shape), return_features=True)
        if kind == "logits":
            out.append(lo)
        else:
            out.append(F.normalize(fe.to(torch.promote_types(fe.dtype, torch.float32)), dim=-1))
    model.train(was)
    return torch.cat(out, 1)


@register
class ICaRL(LifelongMethod):
    """iCaRL as a lifelong method (module docstring): runs alone on the reasoning model it is lent."""

    name = "icarl"
    needs_features = True

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.icarl_features not in FEATURES:
            raise ValueError(f"icarl_features must be one of {FEATURES}, got {cfg.icarl_features!r}")
        if cfg.icarl_distill not in DISTILL:
            raise ValueError(f"icarl_distill must be one of {DISTILL}, got {cfg.icarl_distill!r}")

    @classmethod
    def plan(cls, cfg, image_bits, image_shape, n_tasks, n_classes, task_images) -> StoragePlan:
        N = cfg.budget
        ok, reason = icarl_runnable(N, n_classes if n_classes is not None else 0)
        held = int(task_images) if task_images is not None else max(0, cfg.batch - 1)
        return StoragePlan(cls.name, N, N * image_bits, "image", image_bits, N if ok else 0, 0, ok, reason,
                           held, held * image_bits)

    def __init__(self, cfg, plan, setting, learner, lo, generator, init=None):
        super().__init__(cfg, plan, setting, learner, lo, generator, init)
        self.store = ExemplarStore(cfg.budget, setting.classes, len(setting.task_classes[0]), setting.image_shape,
                                   setting.n_classes, setting.S, device=setting.device, feature=cfg.icarl_features)
        self.t = 0
        self.begin_task(0)

    # ---------------------------------------------------------------- tasks
    def begin_task(self, t: int) -> None:
        """Fix what the task's steps read: the valid exemplar slots (``uniform``) or the rows of the
        old classes with their loss weights (``per_class``). Reads the layout on the host."""
        super().begin_task(t)
        st, dev = self.store, self.setting.device
        self.valid_flat = st.valid.flatten().nonzero().squeeze(1)
        rows = [int(st.row_of[c]) for k in range(t) for c in self.setting.task_classes[k]]
        self.old_rows = torch.tensor(rows, dtype=torch.long, device=dev)
        weight = [1.0 / len(self.setting.task_classes[k]) for k in range(t) for _ in self.setting.task_classes[k]]
        self.old_weight = torch.tensor(weight, dtype=self.learner.dtype, device=dev)
        self.m = st.m
        if self.cfg.icarl_distill == "uniform":
            self.distill = self.cfg.replay > 0 and len(self.valid_flat) > 0 and self.cfg.icarl_reg > 0
        else:
            self.distill = len(rows) > 0 and self.m > 0 and self.cfg.icarl_reg > 0

    def step_key(self):
        return self.t

    def end_task(self, t: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """iCaRL's update of the exemplar sets (herding on the task's examples, held until now)."""
        tick("herding")
        self.store.update(self.learner.model, x, y, t, self.setting.eval_batch)

    # ---------------------------------------------------------------- the step
    def observe(self, x, y, task) -> None:
        S, B = self.setting.S, y.shape[0]
        model, mask, dt = self.learner.model, self.setting.train_mask, self.learner.dtype
        xs = as_input(x, dt).unsqueeze(0).expand(S, *x.shape)
        ys, ts = y.unsqueeze(0).expand(S, B), task.unsqueeze(0).expand(S, B)
        reg = self.cfg.icarl_reg
        for _ in range(self.learner.steps):
            if self.cfg.icarl_distill == "uniform" and self.distill:
                ex, tg, tex = self.store.sample(self.cfg.replay, self.gen, self.valid_flat)
                logits = model(torch.cat([xs, as_input(ex, dt)], 1))
                new, old = logits[:, :B], logits[:, B:]
                dl = distillation_loss(old, tg, tex, mask)
            else:
                new = model(xs)
                dl = None
                if self.distill:  # per_class: one exemplar of every old class, in a pass of their own
                    ex, tg, tex = self.store.sample_per_class(self.old_rows, self.m, self.gen)
                    kl = distillation_loss(model(as_input(ex, dt)), tg, tex, mask, reduction="none")
                    dl = (kl * self.old_weight).sum(-1)
            if mask is not None:
                new = masked_logits(new, ts, mask)
            loss = grouped_cross_entropy(new, ys)
            if dl is not None:
                loss = loss + reg * dl
            backward_step(loss, self.learner.opt)

    # ---------------------------------------------------------------- evaluation
    def predict(self, logits, feats, task, masks):
        p_ta, p_ci = super().predict(logits, feats, task, masks)
        st = self.store
        has = st.class_has_exemplars()
        if st.means is None or not bool(has.any()):
            return p_ta, p_ci
        sc = st.nme_scores(logits if st.feature == "logits" else feats)
        task_has = (masks & has).any(-1)  # (T,)
        p_ci = sc.argmax(-1)
        p_ta = torch.where(task_has[task].unsqueeze(0), masked_logits(sc, task, masks).argmax(-1), p_ta)
        return p_ta, p_ci

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        d = super().state_dict()
        d["store"] = self.store.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.store.load_state_dict(d["store"])
