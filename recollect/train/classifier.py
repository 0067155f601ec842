"""Supervised training of grouped classifiers: the teachers of section 5.1 (LeNet on MNIST, a
multi-task ResNet-18 on Omniglot's 50 alphabets) and any fixed-dataset model."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..grouped import GroupedAdam, grouped_cross_entropy
from .common import group_batches, masked_logits

__all__ = ["train_classifier"]


def train_classifier(model, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, lr,
                     generator: torch.Generator, task=None, class_mask=None, optimizer=None,
                     start_epoch: int = 0, on_epoch_end=None, progress: bool = False, desc: str = "classifier"):
    """Minibatch training with Adam on shared data x (N, C, H, W) uint8, y (N,); each group shuffles
    independently. With ``task`` (N,) and ``class_mask`` (T, K) the logits are task-aware (multi-task
    heads as masks over one output layer). Returns per-epoch mean losses, each (G,)."""
    dev = next(model.parameters()).device
    opt = optimizer or GroupedAdam(model.parameters(), lr=lr)
    x, y = x.to(dev), y.to(dev)
    task = None if task is None else task.to(dev)
    mask = None if class_mask is None else class_mask.to(dev)
    losses = []
    model.train()
    for epoch in tqdm(range(start_epoch, epochs), desc=desc, disable=not progress, leave=False):
        total, count = torch.zeros(model.groups, device=dev), 0
        for idx in group_batches(len(x), model.groups, batch_size, generator, dev):
            logits = model(x[idx])
            if mask is not None:
                logits = masked_logits(logits, task[idx], mask)
            loss = grouped_cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            total += loss.detach() * idx.shape[1]
            count += idx.shape[1]
        losses.append((total / count).cpu())
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, opt, losses)
    return losses
