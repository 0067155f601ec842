"""Supervised training of grouped classifiers: the teachers of section 5.1 (LeNet on MNIST, a
multi-task ResNet-18 on Omniglot's 50 alphabets) and any fixed-dataset model."""
from __future__ import annotations

import torch

from ..grouped import GroupedAdam, grouped_cross_entropy
from .common import masked_logits, run_epochs

__all__ = ["train_classifier"]


def train_classifier(model, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, lr,
                     generator: torch.Generator, task=None, class_mask=None, optimizer=None,
                     start_epoch: int = 0, on_epoch_end=None, progress: bool = False, desc: str = "classifier",
                     *, cuda_graph: bool = True, amp_dtype=None):
    """Minibatch training with Adam on shared data x (N, C, H, W) uint8, y (N,); each group shuffles
    independently. With ``task`` (N,) and ``class_mask`` (T, K) the logits are task-aware (multi-task
    heads as masks over one output layer). Returns per-epoch mean losses, each (G,). ``cuda_graph`` and
    ``amp_dtype`` as in :func:`~recollect.train.common.run_epochs`."""
    dev = next(model.parameters()).device
    opt = optimizer or GroupedAdam(model.parameters(), lr=lr)
    x, y = x.to(dev), y.to(dev)
    task = None if task is None else task.to(dev)
    mask = None if class_mask is None else class_mask.to(dev)

    def batch_loss(idx):
        logits = model(x[idx])
        if mask is not None:
            logits = masked_logits(logits, task[idx], mask)
        return grouped_cross_entropy(logits, y[idx])

    return run_epochs(model, len(x), epochs, batch_size, generator, batch_loss, opt,
                      start_epoch, on_epoch_end, progress, desc, cuda_graph=cuda_graph, amp_dtype=amp_dtype)
