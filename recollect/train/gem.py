"""Gradient Episodic Memory (GEM; Lopez-Paz & Ranzato 2017) for G fused models, as a lifelong method.

GEM keeps an episodic memory of ``m = budget // T`` examples per task (a ring buffer of each task's
latest examples, as in GEM's code) and, before every update, computes the gradient ``g_k`` of the
loss on each previous task's memory. If the proposed gradient ``g`` has a negative dot product with
any ``g_k``, it is replaced by ``g~ = g + M' v`` where ``M`` stacks the memory gradients and ``v``
solves GEM's dual quadratic program (GEM's ``project2cone2``)::

    minimise  1/2 v' (M M') v + (M g)' v    subject to  v >= margin

GEM's code passes ``memory_strength`` as the lower bound ``margin``; ``margin = 0`` is the exact
projection of ``g`` onto the cone ``{x : <x, g_k> >= 0 for all k}`` of the paper. At the optimum
``M g~ = M g + M M' v >= 0`` (the dual's gradient, by its optimality conditions), so a plain SGD
step along ``-g~`` does not increase any stored task's loss to first order (GEM's guarantee; an
optimizer that rescales coordinates, such as Adam, does not keep it).

**The step, with no host synchronisation** (``recollect.train.capture``):

* memory gradients of all previous tasks and all groups come from one vectorised pass
  (:func:`task_gradients`: ``torch.func.vmap`` over the tasks of ``grad`` of the fused model's
  loss), so each (model, task) pair gets its own gradient, with per-task BatchNorm statistics, and
  no copy of the parameters is made (the earlier widened model materialised ``G * t`` copies of
  every parameter each step);
* the QP (:func:`solve_box_qp`) runs a fixed number of iterations of accelerated projected
  gradient with adaptive restart on the diagonally rescaled problem, on the device, in float64;
  the step size comes from the Frobenius norm (an upper bound of the largest eigenvalue), so no
  eigen-decomposition (which reads LAPACK's status on the host) is needed. 100 iterations (the
  default ``qp_iters``) reach a relative optimality residual below 1e-6 on ill-conditioned random
  problems of 5-49 tasks (``tests/test_gem.py``);
* groups whose ``g`` violates no constraint keep ``g`` (``torch.where``; GEM's code solves the QP
  only on a violation, which would be a host branch);
* the memory write is a ring-buffer write at a slot counted on the device.

GEM's own protocol (its code's ``run_experiments.sh`` for CIFAR-100): plain SGD (``GroupedSGD``) at
learning rate 0.1, ``margin`` 0.5, minibatches of 10 incoming examples (``LifelongConfig.batch``),
256 memories per task (``budget = 256 * T``; the paper's Table 4 row: 200 memories in all).
"""
from __future__ import annotations

import math

import torch
from torch.func import functional_call, grad, vmap

from ..grouped import grouped_cross_entropy
from .common import masked_logits
from .methods import LifelongMethod, StoragePlan, as_input, register

__all__ = ["solve_box_qp", "project_gradient", "task_gradients", "flat_grad", "set_flat_grad", "GEMMemory", "GEM"]


def solve_box_qp(P: torch.Tensor, q: torch.Tensor, lower: float = 0.0, iters: int = 100, tol: float | None = None,
                 check_every: int = 20) -> torch.Tensor:
    """Minimise ``1/2 v'Pv + q'v`` subject to ``v >= lower``, batched: P ``(..., n, n)``, q ``(..., n)``.

    ``P`` must be symmetric positive semi-definite. Accelerated projected gradient (FISTA) with
    adaptive restart (O'Donoghue & Candes 2015) in float64, on the rescaled problem
    ``D^-1/2 P D^-1/2`` (``D = diag(P)``, so every rescaled diagonal is 1; the box stays a box) with
    step ``1 / ||D^-1/2 P D^-1/2||_F``. ``tol=None`` (the default, what the training step uses):
    exactly ``iters`` iterations, no host synchronisation. ``tol`` a float: stop once every
    problem's projected-gradient residual ``|v - max(lower, v - (Pv + q))|`` is at most
    ``tol * (1 + max|q|)``, checked every ``check_every`` iterations (one host synchronisation per
    check, at most ``iters / check_every``). Returns v ``(..., n)`` in the dtype of ``q``.
    """
    if P.dim() < 2 or P.shape[-1] != P.shape[-2] or q.shape != P.shape[:-1]:
        raise ValueError(f"P must be (..., n, n) and q (..., n), got {tuple(P.shape)} and {tuple(q.shape)}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    out_dtype = q.dtype
    P = P.double()
    P = 0.5 * (P + P.transpose(-1, -2))
    q = q.double()
    diag = P.diagonal(dim1=-2, dim2=-1)
    d = torch.where(diag > 1e-300, diag.clamp_min(1e-300).rsqrt(), torch.ones_like(diag))  # v = d * w
    Pt = P * d.unsqueeze(-1) * d.unsqueeze(-2)
    L = Pt.flatten(-2).norm(dim=-1).clamp_min(1e-300)[..., None, None]
    eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    A = eye - Pt / L  # w - grad(w) / L = A w + b
    b = (-(q * d)).unsqueeze(-1) / L
    low = (lower / d).unsqueeze(-1)  # (..., n, 1): v >= lower  <=>  w >= lower / d
    scale = 1.0 + q.abs().amax(-1)

    w = low.clone()
    y, t = w, 1.0
    for k in range(1, iters + 1):
        z = torch.baddbmm(b.reshape(-1, *b.shape[-2:]), A.reshape(-1, *A.shape[-2:]),
                          y.reshape(-1, *y.shape[-2:])).reshape(y.shape)
        w_new = torch.maximum(z, low)
        step = w_new - w
        # adaptive restart: drop the momentum where it points uphill (<grad(y), w_new - w> > 0)
        uphill = ((y - z) * step).sum(-2, keepdim=True) > 0
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = torch.where(uphill, w_new, torch.add(w_new, step, alpha=(t - 1.0) / t_new))
        w, t = w_new, t_new
        if tol is not None and (k % check_every == 0 or k == iters):
            v = (w * d.unsqueeze(-1)).squeeze(-1)
            g = (P @ v.unsqueeze(-1)).squeeze(-1) + q
            res = (v - (v - g).clamp_min(lower)).abs().amax(-1)
            if bool((res <= tol * scale).all()):
                break
    return (w.squeeze(-1) * d).to(out_dtype)


def project_gradient(g: torch.Tensor, M: torch.Tensor, margin: float = 0.5, iters: int = 100,
                     **qp) -> tuple[torch.Tensor, torch.Tensor]:
    """GEM's projection for G groups: g ``(G, D)``, memory gradients M ``(G, P, D)``; no host sync.

    Groups whose proposed gradient violates no constraint (every ``<g, g_k> >= 0``) keep ``g``, as
    in GEM's code (the QP is solved for every group and the result dropped by ``torch.where``).
    The Gram matrix ``M M'`` is accumulated in ``M``'s dtype and the QP solved in float64.
    Returns ``(g~ (G, D), violated (G,))``.
    """
    if g.dim() != 2 or M.dim() != 3 or M.shape[0] != g.shape[0] or M.shape[2] != g.shape[1]:
        raise ValueError(f"g must be (G, D) and M (G, P, D), got {tuple(g.shape)} and {tuple(M.shape)}")
    dots = torch.bmm(M, g.unsqueeze(-1)).squeeze(-1)  # (G, P)
    violated = (dots < 0).any(-1)
    P = torch.bmm(M, M.transpose(1, 2))
    v = solve_box_qp(P, dots, lower=margin, iters=iters, **qp)  # q = M g
    g_new = torch.baddbmm(g.unsqueeze(1), v.to(M.dtype).unsqueeze(1), M).squeeze(1)
    return torch.where(violated.unsqueeze(-1), g_new, g), violated


def flat_grad(params) -> torch.Tensor:
    """Gradients of grouped parameters (each ``(G, ...)``) as one ``(G, D)`` tensor (zeros where None)."""
    parts = []
    for p in params:
        gr = p.grad if p.grad is not None else torch.zeros_like(p)
        parts.append(gr.reshape(p.shape[0], -1))
    return torch.cat(parts, 1)


def set_flat_grad(params, flat: torch.Tensor) -> None:
    """Write a ``(G, D)`` gradient back into the ``.grad`` of grouped parameters (inverse of flat_grad);
    one multi-tensor copy where every gradient exists."""
    views, start = [], 0
    for p in params:
        n = p[0].numel()
        views.append(flat[:, start:start + n].reshape(p.shape))
        start += n
    if all(p.grad is not None for p in params):
        torch._foreach_copy_([p.grad for p in params], views)
        return
    for p, v in zip(params, views):
        if p.grad is None:
            p.grad = v.clone()
        else:
            p.grad.copy_(v)


def task_gradients(model, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor, class_mask: torch.Tensor | None):
    """Per (group, task) gradients of the memory losses: ``(G, P, D)``, in one vectorised pass.

    x ``(P, m, C, H, W)`` (uint8 or float), y ``(P, m)``, task ``(P,)`` hold the memories of P tasks,
    shared by the G groups. ``torch.func.vmap`` over the P tasks of the gradient of the grouped
    model's summed per-group loss (the task-masked cross-entropy, GEM's multi-head masking, when
    ``class_mask`` is given): every (group, task) pair gets the gradient of group g's loss on task
    p's memory, computed with that memory's own BatchNorm batch statistics (the model runs in its
    current mode: GEM computes memory gradients in training mode). The parameters are not copied
    (they are shared by the vmapped calls); the BatchNorm running statistics of the P calls are
    discarded. No host synchronisation. D is the number of parameters of one group, in
    ``model.parameters()`` order.
    """
    G = model.groups
    Pn, m = x.shape[:2]
    params = dict(model.named_parameters())
    dtype = next(iter(params.values())).dtype
    detached = {k: v.detach() for k, v in params.items()}
    bufs = {k: b.detach().unsqueeze(0).expand(Pn, *b.shape).clone() for k, b in model.named_buffers()}
    xs = as_input(x, dtype)
    keep = None if class_mask is None else class_mask[task]  # (P, K)

    def loss(ps, bs, xp, yp, kp):
        logits = functional_call(model, {**ps, **bs}, (xp.unsqueeze(0).expand(G, *xp.shape),))
        if kp is not None:
            logits = logits.masked_fill(~kp, float("-inf"))
        return grouped_cross_entropy(logits, yp.unsqueeze(0).expand(G, m)).sum()

    with torch.enable_grad():
        if keep is None:
            grads = vmap(grad(lambda ps, bs, xp, yp: loss(ps, bs, xp, yp, None)),
                         in_dims=(None, 0, 0, 0))(detached, bufs, xs, y)
        else:
            grads = vmap(grad(loss), in_dims=(None, 0, 0, 0, 0))(detached, bufs, xs, y, keep)
    return torch.cat([grads[k].transpose(0, 1).reshape(G, Pn, -1) for k in params], 2)


class GEMMemory:
    """GEM's episodic memory: ``per_task`` examples per task in a ring buffer (the task's latest examples).

    The stream is shared by all groups, so the memory is too: ``x (T, m, C, H, W)`` uint8, ``y (T, m)``,
    and ``count (T,)``, the examples each task has offered, on the device.
    """

    def __init__(self, n_tasks: int, per_task: int, image_shape, device="cpu"):
        if per_task < 1:
            raise ValueError(f"GEM needs at least one memory per task, got per_task={per_task}")
        self.n_tasks, self.per_task = int(n_tasks), int(per_task)
        self.x = torch.zeros(n_tasks, per_task, *image_shape, dtype=torch.uint8, device=device)
        self.y = torch.zeros(n_tasks, per_task, dtype=torch.int64, device=device)
        self.count = torch.zeros(n_tasks, dtype=torch.int64, device=device)
        self._ar = torch.arange(per_task, device=device)

    def add(self, t: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Write one example (x ``(C, H, W)`` uint8, y scalar tensor) into task t's ring buffer."""
        self.add_batch(x.unsqueeze(0), y.reshape(1), torch.tensor(int(t), device=self.x.device))

    def add_batch(self, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> None:
        """Write a batch of one task (x ``(B, C, H, W)`` uint8, y ``(B,)``, task a 0-dim int64 device
        tensor) into its ring buffer, in order, without host synchronisation: the slot count is on the
        device; only the last ``min(B, m)`` examples can survive the batch, so only they are written
        (to distinct slots)."""
        B, m = y.shape[0], self.per_task
        n = min(B, m)
        task = task.reshape(1)  # a 0-dim tensor index would be read on the host, a (1,) one is not
        c = self.count[task]
        slots = (c + (B - n) + self._ar[:n]) % m
        self.x[task, slots] = x[B - n:]
        self.y[task, slots] = y[B - n:].to(torch.int64)
        self.count[task] = c + B

    def check_filled(self, t: int) -> None:
        """``ValueError`` unless tasks ``0 .. t-1`` filled their memories (reads the counts on the host)."""
        short = [k for k in range(t) if int(self.count[k]) < self.per_task]
        if short:
            raise ValueError(f"tasks {short} saw fewer examples than GEM's {self.per_task} memories per task; "
                             f"lower the budget or use longer tasks")

    def tasks_before(self, t: int):
        """Memories of tasks ``0 .. t-1``: ``(x (P, m, ...), y (P, m), task (P,))``; every such task must
        have filled its memory (tasks with fewer examples than ``per_task`` are refused)."""
        self.check_filled(t)
        return self.x[:t], self.y[:t], torch.arange(t, device=self.x.device)

    def state_dict(self) -> dict:
        return {"x": self.x.clone(), "y": self.y.clone(), "count": self.count.clone()}

    def load_state_dict(self, d: dict) -> None:
        self.x.copy_(d["x"])
        self.y.copy_(d["y"])
        self.count.copy_(torch.as_tensor(d["count"], dtype=torch.int64))


@register
class GEM(LifelongMethod):
    """GEM as a lifelong method (module docstring): runs alone on the reasoning model it is lent."""

    name = "gem"

    @classmethod
    def plan(cls, cfg, image_bits, image_shape, n_tasks, n_classes, task_images) -> StoragePlan:
        N = cfg.budget
        per = N // n_tasks
        tr = max(0, cfg.batch - 1)
        if per < 1:
            return StoragePlan(cls.name, N, N * image_bits, "image", image_bits, 0, 0, False,
                               f"GEM keeps budget // tasks = {N} // {n_tasks} = 0 memories per task: "
                               f"fewer memories ({N}) than tasks ({n_tasks})", tr, tr * image_bits)
        return StoragePlan(cls.name, N, N * image_bits, "image", image_bits, per * n_tasks, 0, True, "",
                           tr, tr * image_bits)

    def __init__(self, cfg, plan, setting, learner, lo, generator, init=None):
        super().__init__(cfg, plan, setting, learner, lo, generator, init)
        T = setting.n_tasks
        per = plan.capacity // T
        short = [t for t, n in enumerate(setting.task_sizes[:-1]) if n < per]
        if short:
            raise ValueError(f"tasks {short} have fewer training examples than GEM's {per} memories per task "
                             f"(budget {cfg.budget} // {T} tasks); lower the budget or use longer tasks")
        self.memory = GEMMemory(T, per, setting.image_shape, device=setting.device)
        self.params = list(learner.model.parameters())
        self.t = 0

    def step_key(self):
        return self.t  # the number of stored tasks fixes the shapes of the memory gradients

    def observe(self, x, y, task) -> None:
        """``steps`` GEM updates on the incoming batch, then its write into the task's memory."""
        S, B = self.setting.S, y.shape[0]
        model, opt, mask = self.learner.model, self.learner.opt, self.setting.train_mask
        xs = as_input(x, self.learner.dtype).unsqueeze(0).expand(S, *x.shape)
        ys, ts = y.unsqueeze(0).expand(S, B), task.unsqueeze(0).expand(S, B)
        t = self.t
        for _ in range(self.learner.steps):
            logits = model(xs)
            if mask is not None:
                logits = masked_logits(logits, ts, mask)
            loss = grouped_cross_entropy(logits, ys).sum()
            M = None
            if t > 0:
                M = task_gradients(model, self.memory.x[:t], self.memory.y[:t], self.memory_tasks, mask)
            with torch.autocast(x.device.type, enabled=False):
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if M is not None:
                    g, _ = project_gradient(flat_grad(self.params), M.to(self.learner.dtype), self.cfg.gem_margin,
                                            iters=self.cfg.qp_iters)
                    set_flat_grad(self.params, g)
                opt.step()
        self.memory.add_batch(x, y, task[0])

    def begin_task(self, t: int) -> None:
        super().begin_task(t)
        self.memory_tasks = torch.arange(t, device=self.setting.device)

    def state_dict(self) -> dict:
        d = super().state_dict()
        d["memory"] = self.memory.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.memory.load_state_dict(d["memory"])
