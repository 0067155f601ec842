"""Lifelong-learning metrics (section 5.2; the definitions of GEM, Lopez-Paz & Ranzato 2017, section 4).

An *accuracy matrix* ``R`` has shape ``(..., T, T)``: ``R[i, j]`` is the test accuracy on task ``j``
after the model has learned tasks ``0 .. i`` (rows: time, columns: tasks). Leading dimensions are
kept, so the ``(G, T, T)`` matrices of G fused runs give ``(G,)`` results. ``b`` (shape ``(..., T)``)
is the accuracy of the model at random initialisation on each task, which forward transfer needs.

* **Average accuracy** ("retention" in the paper's tables): ``ACC = 1/T sum_j R[T-1, j]``.
* **Backward transfer**: ``BWT = 1/(T-1) sum_{j < T-1} (R[T-1, j] - R[j, j])``: how learning later
  tasks changed the accuracy on earlier ones (negative: forgetting).
* **Forward transfer**: ``FWT = 1/(T-1) sum_{j >= 1} (R[j-1, j] - b[j])``: how learning earlier
  tasks changed the accuracy on a task before it is learned.

GEM's *paper* divides BWT and FWT by ``T - 1`` (the number of terms); GEM's *code*
(``metrics/metrics.py``) averages over all ``T`` tasks with a zero term for the last (BWT) or first
(FWT) task, i.e. divides by ``T``. ``divide_by="T-1"`` (default) follows the paper, ``divide_by="T"``
the code; the two differ by the factor ``(T - 1) / T``.
"""
from __future__ import annotations

import torch

__all__ = ["check_matrix", "average_accuracy", "retention", "backward_transfer", "forward_transfer",
           "learning_accuracy", "average_seen_accuracy", "summarize"]


def _as_tensor(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.double() if not t.is_floating_point() else t


def check_matrix(R) -> torch.Tensor:
    """``R`` as a floating tensor ``(..., T, T)``; ``ValueError`` if it is not square in its last two dims."""
    R = _as_tensor(R)
    if R.dim() < 2 or R.shape[-1] != R.shape[-2] or R.shape[-1] < 1:
        raise ValueError(f"an accuracy matrix must have shape (..., T, T) with T >= 1 (row i: after task i, "
                         f"column j: task j), got {tuple(R.shape)}")
    return R


def _denominator(T: int, divide_by: str) -> int:
    if divide_by == "T-1":
        return T - 1
    if divide_by == "T":
        return T
    raise ValueError(f"divide_by must be 'T-1' (GEM's paper) or 'T' (GEM's code), got {divide_by!r}")


def average_accuracy(R) -> torch.Tensor:
    """ACC: mean over tasks of the accuracy after the last task, ``R[..., T-1, :].mean(-1)``."""
    return check_matrix(R)[..., -1, :].mean(-1)


#: the paper calls the final average accuracy "retention" (Tables 3 and 4, section 5.2)
retention = average_accuracy


def learning_accuracy(R) -> torch.Tensor:
    """Mean of the diagonal ``R[j, j]``: accuracy on each task right after learning it."""
    return torch.diagonal(check_matrix(R), dim1=-2, dim2=-1).mean(-1)


def backward_transfer(R, divide_by: str = "T-1") -> torch.Tensor:
    """BWT = sum_{j < T-1} (R[T-1, j] - R[j, j]) / (T-1) (or / T). NaN when T = 1 and divide_by='T-1'."""
    R = check_matrix(R)
    T = R.shape[-1]
    diag = torch.diagonal(R, dim1=-2, dim2=-1)
    total = (R[..., -1, :-1] - diag[..., :-1]).sum(-1)
    d = _denominator(T, divide_by)
    return total / d if d else torch.full_like(total, float("nan"))


def forward_transfer(R, b, divide_by: str = "T-1") -> torch.Tensor:
    """FWT = sum_{j >= 1} (R[j-1, j] - b[j]) / (T-1) (or / T), with ``b`` the random-init accuracies."""
    R = check_matrix(R)
    T = R.shape[-1]
    b = _as_tensor(b).to(R.dtype)
    if b.shape[-1] != T:
        raise ValueError(f"b must hold one accuracy per task (last dim {T}), got shape {tuple(b.shape)}")
    above = torch.diagonal(R, offset=1, dim1=-2, dim2=-1)  # R[j-1, j] for j = 1 .. T-1
    total = (above - b[..., 1:]).sum(-1)
    d = _denominator(T, divide_by)
    return total / d if d else torch.full_like(total, float("nan"))


def average_seen_accuracy(R) -> torch.Tensor:
    """``(..., T)``: after each task i, the mean accuracy over the tasks seen so far (0 .. i)."""
    R = check_matrix(R)
    T = R.shape[-1]
    seen = torch.tril(torch.ones(T, T, dtype=R.dtype, device=R.device))
    return (R * seen).sum(-1) / seen.sum(-1)


def summarize(R, b, divide_by: str = "T-1") -> dict:
    """``{"ACC", "BWT", "FWT", "LA"}`` (each ``(...)``) of an accuracy matrix and its random-init ``b``."""
    return {"ACC": average_accuracy(R), "BWT": backward_transfer(R, divide_by),
            "FWT": forward_transfer(R, b, divide_by), "LA": learning_accuracy(R)}
