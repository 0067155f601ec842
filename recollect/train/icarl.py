"""iCaRL (Rebuffi, Kolesnikov, Sperl & Lampert 2017) for G fused models: herding exemplars and
nearest-mean-of-exemplars classification, in the single-pass stream of section 5.2.

* **Exemplar budget.** A total of ``budget`` exemplars: after a task ends, every class seen so far
  keeps ``m = budget // classes_seen`` exemplars (iCaRL's ``m = K / t``); older classes keep the
  first ``m`` of their herding order (iCaRL's ReduceExemplarSet). With fewer memories than classes
  (``m = 0``) iCaRL cannot run: :func:`icarl_runnable` says so up front.
* **Herding** (iCaRL's ConstructExemplarSet): for each class of the finished task, exemplars are
  picked greedily so that the running mean of their L2-normalised features stays closest to the
  class mean. Like iCaRL (and GEM's re-implementation of it), the examples of the current task are
  at hand until the task ends (the stream is single-pass; only these are used for herding).
* **Training** (as GEM's re-implementation for the single-pass setting): task-masked
  cross-entropy on the incoming example plus ``reg`` times a distillation loss on a batch of
  exemplars, whose targets are the network's (task-masked) outputs recorded at the end of the last
  task. GEM draws one exemplar per class of each old task; here ``replay`` exemplars are drawn
  uniformly from the whole store.
* **Classification**: the nearest mean of exemplars (normalised features) among the classes of the
  example's task (task-aware) or among all classes with exemplars (class-incremental). Before a
  task's classes have exemplars (e.g. future tasks, for forward transfer) the network's own
  outputs are used.

The stream is shared by all groups, so the exemplar *layout* (class rows, ``m``, valid slots) is
shared; the exemplars themselves differ per group (herding uses each model's features).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["icarl_runnable", "herding", "features", "ExemplarStore", "distillation_loss"]


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
                      class_mask: torch.Tensor | None) -> torch.Tensor:
    """Per-group KL(softmax(target) || softmax(logits)) over each exemplar's task classes, ``(G,)``."""
    if class_mask is not None:
        keep = class_mask[task]
        logits = logits.masked_fill(~keep, -1e9)
        target_logits = target_logits.masked_fill(~keep, -1e9)
    p = F.softmax(target_logits.float(), -1)
    kl = (p * (F.log_softmax(target_logits.float(), -1) - F.log_softmax(logits.float(), -1))).sum(-1)
    return kl.mean(-1)


class ExemplarStore:
    """The exemplar sets of G groups: images ``x (G, R, m0, C, H, W)`` uint8 with one row per class
    (classes in order of appearance), slots in herding order; ``m0`` = exemplars per class after
    the first task (``m`` only decreases). ``targets (G, R, m0, K)`` are the distillation targets."""

    def __init__(self, budget: int, classes: list[int], first_task_classes: int, image_shape,
                 n_classes: int, groups: int, device="cpu"):
        ok, reason = icarl_runnable(budget, len(classes))
        if not ok:
            raise ValueError(reason)
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
        was = model.training
        model.eval()
        logits, feats = [], []
        for s in range(0, R * m0, batch_size):
            lo, fe = model(flat[:, s:s + batch_size], return_features=True)
            logits.append(lo.float())
            feats.append(F.normalize(fe.float(), dim=-1))
        model.train(was)
        self.targets = torch.cat(logits, 1).reshape(G, R, m0, -1)
        fe = torch.cat(feats, 1).reshape(G, R, m0, -1)
        v = self.valid.to(fe.dtype)
        mean = (fe * v[None, :, :, None]).sum(2) / v.sum(-1).clamp_min(1)[None, :, None]
        self.means = F.normalize(mean, dim=-1)

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

    @torch.no_grad()
    def nme_scores(self, feats: torch.Tensor) -> torch.Tensor:
        """Negative distances of normalised features ``(G, N, D)`` to the class means: ``(G, N, K)``,
        ``-inf`` for classes without exemplars."""
        G, N, _ = feats.shape
        out = torch.full((G, N, self.n_classes), float("-inf"), device=feats.device)
        if self.means is None:
            return out
        d = torch.cdist(F.normalize(feats.float(), dim=-1), self.means)  # (G, N, R)
        has = self.seen & (self.filled.clamp(max=self.m) > 0)
        d = torch.where(has.view(1, 1, -1), -d, torch.full_like(d, float("-inf")))
        out[:, :, self.classes] = d
        return out

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("x", "targets", "task", "filled", "seen", "m", "means")}

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v.to(self.classes.device) if isinstance(v, torch.Tensor) else v)


@torch.no_grad()
def features(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """L2-normalised penultimate features ``(G, N, D)`` of shared images x ``(N, C, H, W)``, eval mode."""
    was = model.training
    model.eval()
    G = model.groups
    out = []
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        _, fe = model(xb.unsqueeze(0).expand(G, *xb.shape), return_features=True)
        out.append(F.normalize(fe.float(), dim=-1))
    model.train(was)
    return torch.cat(out, 1)
