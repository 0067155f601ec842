"""Pieces shared by the training loops: grouped batches, task masks, evaluation."""
from __future__ import annotations

import torch

from .capture import CapturedStep, backward_step
from .probe import tick

__all__ = ["run_epochs", "host_copy", "noise_generator", "group_batches", "masked_logits", "evaluate", "predict_proba", "iterate"]


def host_copy(obj):
    """A copy of a (nested) state dict with every tensor detached and copied to the host once:
    nothing aliases the live state, and nothing is copied on the device (a fused model can be
    gigabytes on a GPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v) for v in obj)
    return obj


def noise_generator(generator, device):
    """``generator`` if it lives on ``device`` (so it can drive sampling there), else None."""
    if generator is not None and generator.device.type == torch.device(device).type:
        return generator
    return None


def group_batches(n: int, groups: int, batch_size: int, generator: torch.Generator, device="cpu"):
    """One epoch of independent shuffles, one per group: yields index tensors (G, B).

    The last, smaller batch is kept, so every example is seen once per epoch by every group.
    """
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(groups)]).to(device)
    for start in range(0, n, batch_size):
        yield perms[:, start:start + batch_size]


def masked_logits(logits: torch.Tensor, task: torch.Tensor, class_mask: torch.Tensor) -> torch.Tensor:
    """Task-aware logits (GEM's masking): classes outside the example's task get -inf.

    logits (G, B, K); task (G, B) or (B,); class_mask (T, K) bool.
    """
    keep = class_mask[task]  # (..., B, K)
    if keep.dim() == 2:
        keep = keep.unsqueeze(0)
    return logits.masked_fill(~keep, float("-inf"))


def iterate(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


@torch.no_grad()
def predict_proba(model, x: torch.Tensor, batch_size: int = 1000, task=None, class_mask=None) -> torch.Tensor:
    """Softmax outputs (G, N, K) of a grouped classifier for shared inputs x (N, C, H, W)."""
    was = model.training
    model.eval()
    g = model.groups
    outs = []
    dev = next(model.parameters()).device
    for sl in iterate(len(x), batch_size):
        tick("eval")
        xb = x[sl].to(dev).unsqueeze(0).expand(g, *x[sl].shape)
        logits = model(xb)
        if class_mask is not None:
            logits = masked_logits(logits, task[sl].to(dev), class_mask.to(dev))
        outs.append(torch.softmax(logits.float(), -1))
    model.train(was)
    return torch.cat(outs, 1)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000, task=None, class_mask=None) -> torch.Tensor:
    """Accuracy in percent per group (G,) on shared test data; task-aware when a mask is given."""
    p = predict_proba(model, x, batch_size, task, class_mask)
    return (p.argmax(-1) == y.to(p.device)).float().mean(1) * 100


def run_epochs(model, n: int, epochs: int, batch_size: int, generator: torch.Generator, batch_loss, optimizer,
               start_epoch: int = 0, on_epoch_end=None, progress: bool = False, desc: str = "train", *,
               cuda_graph: bool = True, amp_dtype=None, generators=()) -> list:
    """The epoch loop shared by the trainers (the autoencoders of section 4 and Figure 2, the teachers
    of section 5.1): each group shuffles ``range(n)`` independently; ``batch_loss(idx (G, B)) -> (G,)``;
    one optimizer step per batch on the summed group losses. Returns per-epoch mean losses (G,) on
    the CPU; ``on_epoch_end(epoch, model, optimizer, losses)`` lets the caller checkpoint (or assign a
    new ``group["lr"]``: it reaches the next step), ``start_epoch`` resume.

    Every full batch is one :class:`~recollect.train.capture.CapturedStep` whose input is the batch's
    index tensor: on CUDA with ``cuda_graph=True`` a replayed CUDA graph with no host
    synchronisation (one copy of the per-epoch losses to the host per epoch); the last, partial
    batch runs eagerly. ``batch_loss`` must then use only device tensors and the default CUDA
    generator or ``generators`` (explicit CUDA generators, registered with the graph).
    ``amp_dtype`` (e.g. ``torch.bfloat16``) runs ``batch_loss`` under autocast. On the CPU the
    arithmetic is the plain eager loop's."""
    from tqdm import tqdm

    dev = next(model.parameters()).device

    def train_step(idx):
        loss = batch_loss(idx).float()
        backward_step(loss, optimizer)
        return loss.detach()

    step = CapturedStep(train_step, cuda_graph=cuda_graph, amp_dtype=amp_dtype, optimizers=[optimizer],
                        generators=generators, device=dev, name=desc)
    losses = []
    for epoch in tqdm(range(start_epoch, epochs), desc=desc, disable=not progress, leave=False):
        model.train()  # a callback may have evaluated: the eager last batch must match the graph's mode
        total, count = torch.zeros(model.groups, device=dev), 0
        for idx in group_batches(n, model.groups, batch_size, generator, dev):
            tick("epochs")
            loss = step(idx) if idx.shape[1] == batch_size else step.eager(idx)
            total += loss * idx.shape[1]
            count += idx.shape[1]
        losses.append((total / count).cpu())
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, optimizer, losses)
    return losses
