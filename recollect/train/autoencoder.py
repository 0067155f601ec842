"""Training the recollection generator (section 4.2, appendix A.1).

The paper does not name the loss of its autoencoders. ``loss="bce"`` is a per-pixel binary
cross-entropy reconstruction loss through the straight-through Gumbel-softmax (the default; see
the distortion chapter's protocol notes for why); ``kl_weight > 0`` adds the categorical VAE's
KL divergence to the uniform prior (Jang et al. 2017), summed over variables and divided by the
number of pixels so that it is on the scale of the per-pixel loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..grouped import GroupedAdam
from .probe import tick
from .common import iterate, noise_generator, run_epochs

__all__ = ["reconstruction_loss", "train_autoencoder", "distortion", "encode_all", "decode_all"]


def reconstruction_loss(model, xb: torch.Tensor, generator=None, kl_weight: float = 0.0) -> torch.Tensor:
    """Per-group loss (G,) of a grouped autoencoder on a batch (G, B, C, H, W) of uint8 or [0, 1] images."""
    target = model.as_input(xb)
    recon, code_logits, _ = model(xb, generator)
    loss = F.binary_cross_entropy_with_logits(recon, target, reduction="none").flatten(2).mean(-1).mean(-1)
    if kl_weight and code_logits is not None and code_logits.dim() == 4:
        logq = F.log_softmax(code_logits.float(), -1)
        kl = (logq.exp() * (logq + math.log(code_logits.shape[-1]))).sum((-1, -2)).mean(-1)
        loss = loss + kl_weight * kl / target[0, 0].numel()
    return loss


def train_autoencoder(model, x: torch.Tensor, epochs: int, batch_size: int, lr, generator: torch.Generator,
                      kl_weight: float = 0.0, optimizer=None, start_epoch: int = 0, on_epoch_end=None,
                      progress: bool = False, desc: str = "autoencoder", *, cuda_graph: bool = True,
                      amp_dtype=None) -> list:
    """Train a grouped autoencoder on shared images x (N, C, H, W) uint8 (each group its own shuffle).

    ``lr`` is a float or a (G,) tensor (a learning-rate sweep in one fused run). Returns the list of
    per-epoch mean training losses, each a (G,) tensor. ``on_epoch_end(epoch, model, optimizer,
    losses)`` is called after every epoch (the experiments use it to checkpoint); ``start_epoch``
    resumes a run whose model and optimizer state were restored by the caller. ``cuda_graph`` and
    ``amp_dtype`` as in :func:`~recollect.train.common.run_epochs` (every full batch replayed from a
    CUDA graph on CUDA; the Gumbel noise from ``generator`` when it lives on the model's device, else
    from the default generator of that device).
    """
    dev = next(model.parameters()).device
    opt = optimizer or GroupedAdam(model.parameters(), lr=lr)
    x = x.to(dev)
    noise = noise_generator(generator, dev)
    return run_epochs(model, len(x), epochs, batch_size, generator,
                      lambda idx: reconstruction_loss(model, x[idx], noise, kl_weight), opt,
                      start_epoch, on_epoch_end, progress, desc, cuda_graph=cuda_graph, amp_dtype=amp_dtype,
                      generators=() if noise is None else (noise,))


@torch.no_grad()
def distortion(model, x: torch.Tensor, batch_size: int = 1000, generator=None) -> torch.Tensor:
    """Appendix A.1: mean absolute pixel error (pixels / 255) over x, one stochastic pass, per group (G,)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    g = model.groups
    total = torch.zeros(g, device=dev, dtype=torch.float64)
    for sl in iterate(len(x), batch_size):
        tick("eval")
        xb = x[sl].to(dev).unsqueeze(0).expand(g, *x[sl].shape)
        recon, _, _ = model(xb, noise_generator(generator, dev))
        err = (torch.sigmoid(recon) - model.as_input(xb)).abs().flatten(2).mean(-1)  # (G, B)
        total += err.double().sum(1)
    model.train(was)
    return (total / len(x)).float().cpu()


@torch.no_grad()
def encode_all(model, x: torch.Tensor, batch_size: int = 1000, generator=None) -> torch.Tensor:
    """Codes (G, N, c) of shared images x (N, C, H, W): one stochastic pass (what the buffer stores)."""
    dev = next(model.parameters()).device
    g = model.groups
    out = []
    for sl in iterate(len(x), batch_size):
        tick("eval")
        xb = x[sl].to(dev).unsqueeze(0).expand(g, *x[sl].shape)
        out.append(model.encode(xb, noise_generator(generator, dev)))
    return torch.cat(out, 1)


@torch.no_grad()
def decode_all(model, codes: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Recollections (G, N, C, H, W) as uint8 from codes (G, N, c): decoding is deterministic."""
    out = []
    for sl in iterate(codes.shape[1], batch_size):
        tick("eval")
        out.append((model.decode(codes[:, sl]) * 255).round().to(torch.uint8))
    return torch.cat(out, 1)
