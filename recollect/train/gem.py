"""Gradient Episodic Memory (GEM; Lopez-Paz & Ranzato 2017), for G fused models, with its own QP solver.

GEM keeps an episodic memory of ``m`` examples per task (a ring buffer of each task's most recent
examples, as in GEM's code) and, before every update, computes the gradient of the loss on each
previous task's memory. If the proposed gradient ``g`` has a negative dot product with any memory
gradient ``g_k``, it is replaced by ``g~ = g + M' v`` where ``M`` stacks the memory gradients and
``v`` solves GEM's dual quadratic program (GEM's ``project2cone2``)::

    minimise  1/2 v' (M M') v + (M g)' v    subject to  v >= margin

(GEM's code passes ``memory_strength`` as the lower bound ``margin``; ``margin = 0`` is the
exact projection of ``g`` onto the cone ``{x : <x, g_k> >= 0 for all k}`` of the paper.)

The dual is a small box-constrained QP (one variable per previous task), solved here by
:func:`solve_box_qp`: accelerated projected gradient (FISTA with adaptive restart) in float64,
batched over the G groups, stopped when the projected-gradient residual is below a tolerance.

Memory gradients of all previous tasks and all groups come from ONE forward/backward pass: the
fused network is widened to ``G * P`` groups whose parameters are copies of the G models
(:func:`task_gradients`), so each (model, task) pair gets its own gradient without a Python loop.
"""
from __future__ import annotations

import math

import torch
from torch.func import functional_call

from ..grouped import grouped_cross_entropy
from .common import masked_logits

__all__ = ["solve_box_qp", "project_gradient", "task_gradients", "flat_grad", "set_flat_grad", "GEMMemory"]


def solve_box_qp(P: torch.Tensor, q: torch.Tensor, lower: float = 0.0, iters: int = 1000,
                 tol: float = 1e-8, check_every: int = 20) -> torch.Tensor:
    """Minimise ``1/2 v'Pv + q'v`` subject to ``v >= lower``, batched: P ``(..., n, n)``, q ``(..., n)``.

    ``P`` must be symmetric positive semi-definite. Accelerated projected gradient with step
    ``1 / lambda_max(P)`` and adaptive restart (O'Donoghue & Candes 2015), in float64. Stops after
    ``iters`` iterations or when every problem's projected-gradient residual
    ``|v - max(lower, v - (Pv + q) / L)| * L`` is at most ``tol * (1 + max|q|)`` (checked every
    ``check_every`` iterations: one host synchronisation per check). Returns v ``(..., n)`` in
    the dtype of ``q``.
    """
    if P.dim() < 2 or P.shape[-1] != P.shape[-2] or q.shape != P.shape[:-1]:
        raise ValueError(f"P must be (..., n, n) and q (..., n), got {tuple(P.shape)} and {tuple(q.shape)}")
    out_dtype = q.dtype
    P = P.double()
    P = 0.5 * (P + P.transpose(-1, -2))
    q = q.double()
    L = torch.linalg.eigvalsh(P)[..., -1].clamp_min(1e-300).unsqueeze(-1)  # (..., 1)
    scale = 1.0 + q.abs().amax(-1, keepdim=True)

    def grad(v):
        return (P @ v.unsqueeze(-1)).squeeze(-1) + q

    v = torch.full_like(q, float(lower))
    y, t = v.clone(), 1.0
    for k in range(1, iters + 1):
        gy = grad(y)
        v_new = (y - gy / L).clamp_min(lower)
        # adaptive restart: drop the momentum where it points uphill
        restart = ((gy * (v_new - v)).sum(-1, keepdim=True) > 0)
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        mom = (t - 1.0) / t_new
        y = torch.where(restart, v_new, v_new + mom * (v_new - v))
        v, t = v_new, t_new
        if k % check_every == 0 or k == iters:
            res = (v - (v - grad(v) / L).clamp_min(lower)).abs() * L
            if bool((res <= tol * scale).all()):
                break
    return v.to(out_dtype)


def project_gradient(g: torch.Tensor, M: torch.Tensor, margin: float = 0.5, **qp) -> tuple[torch.Tensor, torch.Tensor]:
    """GEM's projection for G groups: g ``(G, D)``, memory gradients M ``(G, P, D)``.

    Groups whose proposed gradient violates no constraint (every ``<g, g_k> >= 0``) keep ``g``, as
    in GEM's code (it solves the QP only on a violation). Returns ``(g~ (G, D), violated (G,))``.
    """
    if g.dim() != 2 or M.dim() != 3 or M.shape[0] != g.shape[0] or M.shape[2] != g.shape[1]:
        raise ValueError(f"g must be (G, D) and M (G, P, D), got {tuple(g.shape)} and {tuple(M.shape)}")
    dots = torch.bmm(M, g.unsqueeze(-1)).squeeze(-1)  # (G, P)
    violated = (dots < 0).any(-1)
    if not bool(violated.any()):
        return g, violated
    Md = M.double()
    P = torch.bmm(Md, Md.transpose(1, 2))
    v = solve_box_qp(P, dots.double(), lower=margin, **qp)  # q = M g
    g_new = g + torch.bmm(v.unsqueeze(1).to(M.dtype), M).squeeze(1)
    return torch.where(violated.unsqueeze(-1), g_new, g), violated


def flat_grad(params) -> torch.Tensor:
    """Gradients of grouped parameters (each ``(G, ...)``) as one ``(G, D)`` tensor (zeros where None)."""
    parts = []
    for p in params:
        gr = p.grad if p.grad is not None else torch.zeros_like(p)
        parts.append(gr.reshape(p.shape[0], -1))
    return torch.cat(parts, 1)


def set_flat_grad(params, flat: torch.Tensor) -> None:
    """Write a ``(G, D)`` gradient back into the ``.grad`` of grouped parameters (inverse of flat_grad)."""
    start = 0
    for p in params:
        n = p[0].numel()
        g = flat[:, start:start + n].reshape(p.shape)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        start += n


def task_gradients(model, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor, class_mask: torch.Tensor | None):
    """Per (group, task) gradients of the memory losses: ``(G, P, D)`` in one fused pass.

    x ``(P, m, C, H, W)`` (uint8 or float), y ``(P, m)``, task ``(P,)`` hold the memories of P tasks,
    shared by the G groups. The grouped model is widened to ``G * P`` groups (group ``g * P + p``
    = model g on task p's memory); the loss is the task-masked cross-entropy (GEM's multi-head
    masking) when ``class_mask`` is given. The model runs in its current mode (GEM computes memory
    gradients in training mode); BatchNorm running statistics of the widened copies are discarded.
    """
    G = model.groups
    Pn, m = x.shape[:2]
    names, params = zip(*[(n, p) for n, p in model.named_parameters()])
    wide = {}
    leaves = []
    for n, p in zip(names, params):
        w = p.detach().unsqueeze(1).expand(G, Pn, *p.shape[1:]).reshape(G * Pn, *p.shape[1:]).requires_grad_(True)
        wide[n] = w
        leaves.append(w)
    for n, b in model.named_buffers():
        wide[n] = b.detach().unsqueeze(1).expand(G, Pn, *b.shape[1:]).reshape(G * Pn, *b.shape[1:]).clone()
    xw = x.unsqueeze(0).expand(G, *x.shape).reshape(G * Pn, m, *x.shape[2:])
    yw = y.unsqueeze(0).expand(G, Pn, m).reshape(G * Pn, m)
    with torch.enable_grad():
        logits = functional_call(model, wide, (xw,))
        if class_mask is not None:
            tw = task.view(1, Pn, 1).expand(G, Pn, m).reshape(G * Pn, m)
            logits = masked_logits(logits, tw, class_mask)
        loss = grouped_cross_entropy(logits, yw)
        grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
    flat = [torch.zeros_like(w).reshape(G, Pn, -1) if gr is None else gr.reshape(G, Pn, -1)
            for w, gr in zip(leaves, grads)]
    return torch.cat(flat, 2)


class GEMMemory:
    """GEM's episodic memory: ``per_task`` examples per task in a ring buffer (the task's latest examples).

    The stream is shared by all groups, so the memory is too: ``x (T, m, C, H, W)`` uint8, ``y (T, m)``.
    """

    def __init__(self, n_tasks: int, per_task: int, image_shape, device="cpu"):
        if per_task < 1:
            raise ValueError(f"GEM needs at least one memory per task, got per_task={per_task}")
        self.n_tasks, self.per_task = int(n_tasks), int(per_task)
        self.x = torch.zeros(n_tasks, per_task, *image_shape, dtype=torch.uint8, device=device)
        self.y = torch.zeros(n_tasks, per_task, dtype=torch.int64, device=device)
        self.count = [0] * n_tasks

    def add(self, t: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Write one example (x ``(C, H, W)`` uint8, y scalar tensor) into task t's ring buffer."""
        slot = self.count[t] % self.per_task
        self.x[t, slot] = x
        self.y[t, slot] = y
        self.count[t] += 1

    def tasks_before(self, t: int):
        """Memories of tasks ``0 .. t-1``: ``(x (P, m, ...), y (P, m), task (P,))``; every such task must
        have filled its memory (tasks with fewer examples than ``per_task`` are refused)."""
        short = [k for k in range(t) if self.count[k] < self.per_task]
        if short:
            raise ValueError(f"tasks {short} saw fewer examples than GEM's {self.per_task} memories per task; "
                             f"lower the budget or use longer tasks")
        return self.x[:t], self.y[:t], torch.arange(t, device=self.x.device)

    def state_dict(self) -> dict:
        return {"x": self.x.clone(), "y": self.y.clone(), "count": list(self.count)}

    def load_state_dict(self, d: dict) -> None:
        self.x.copy_(d["x"])
        self.y.copy_(d["y"])
        self.count = list(d["count"])
