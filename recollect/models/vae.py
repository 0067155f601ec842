"""Autoencoders of the paper (section 4.1-4.2, appendix A), grouped.

Appendix A: three convolutional layers in the encoder and three transposed convolutions in the
decoder, kernel size 5, and ``c*l/4`` filters in every layer "to keep the number of hidden variables
consistent": the third encoder convolution ends at a 2x2 map, so its ``c*l/4`` channels hold the
``c*l`` logits of the c categorical variables of l categories (28x28: 28 -> 14 -> 7 -> 2; 32x32:
32 -> 16 -> 8 -> 2). The decoder mirrors it and ends in per-pixel logits (a sigmoid gives the image).

The continuous autoencoder of Table 6 uses the same layout with ``h`` filters, so its latent holds
``4h`` floats (compression 6272 / (32 * 4h) = 49 / h, as Table 6 prints).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import accounting
from ..grouped import GConv2d, GConvTranspose2d, GroupedModule, from_channels, to_channels

__all__ = ["CategoricalVAE", "ContinuousAE", "gumbel_softmax_st", "one_hot", "conv_geometry", "vae_param_bits",
           "LOGIT_LIMIT"]

#: logits are clamped to +-LOGIT_LIMIT before sampling, so +-inf or huge logits cannot make NaN
LOGIT_LIMIT = 1e4


def gumbel_softmax_st(logits: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None,
                      sample: bool = True):
    """Straight-through Gumbel-softmax (section 4.2, eqs 7-8). Returns ``(z, index)``.

    Forward: the hard one-hot of ``argmax(g + log p)`` (Gumbel-max, eq 7). Backward: the gradient of
    the soft sample ``softmax((g + log p) / tau)`` (eq 8). ``sample=False`` drops the noise (the
    mode). The sampler cannot produce NaN: logits are clamped to a finite range and the uniform
    draws are kept inside (0, 1) so that ``-log(-log u)`` is finite.
    """
    if tau <= 0:
        raise ValueError(f"the Gumbel-softmax temperature must be > 0, got {tau}")
    if logits.dtype != torch.float64:  # half / bfloat16 (autocast) are sampled in float32; float64 stays
        logits = logits.float()
    logits = logits.clamp(-LOGIT_LIMIT, LOGIT_LIMIT)
    logp = F.log_softmax(logits, dim=-1)
    if sample:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        tiny = torch.finfo(u.dtype).tiny
        u = u.clamp_(tiny, 1.0 - torch.finfo(u.dtype).eps / 2)
        scores = logp - torch.log(-torch.log(u))
    else:
        scores = logp
    soft = F.softmax(scores / tau, dim=-1)
    index = scores.argmax(-1)
    hard = one_hot(index, soft.shape[-1], soft.dtype)  # no host sync, unlike F.one_hot
    return hard - soft.detach() + soft, index


def one_hot(index: torch.Tensor, l: int, dtype=torch.float32) -> torch.Tensor:
    """One-hot ``(..., l)`` of integer codes ``(...,)`` known to lie in ``[0, l)``, built by a scatter:
    unlike ``F.one_hot`` it reads nothing back to the host (no range check), so a captured step can
    use it (section 4.2's codes as the decoder's input)."""
    return torch.zeros(*index.shape, l, dtype=dtype, device=index.device).scatter_(-1, index.unsqueeze(-1).long(), 1.0)


def conv_geometry(size: int):
    """Spatial sizes and (stride, padding, output_padding) of the three encoder/decoder layers.

    Encoder: k5/s2/p2, k5/s2/p2, k5/s2/p0; the decoder's output paddings restore the exact sizes.
    """
    if size < 17:
        raise ValueError(f"images must be at least 17 pixels wide for three stride-2 k5 layers, got {size}")
    s1 = (size - 1) // 2 + 1
    s2 = (s1 - 1) // 2 + 1
    s3 = (s2 - 5) // 2 + 1
    enc = [(2, 2), (2, 2), (2, 0)]
    # decoder: s3 -> s2 (p0), s2 -> s1 (p2), s1 -> size (p2); out = (in-1)*2 - 2p + 5 + op
    ops = [s2 - ((s3 - 1) * 2 + 5), s1 - ((s2 - 1) * 2 - 4 + 5), size - ((s1 - 1) * 2 - 4 + 5)]
    return (s1, s2, s3), enc, ops


class _ConvAutoencoder(GroupedModule):
    """Three k5 convolutions down to a ``latent_channels`` x s3 x s3 map, three transposed back."""

    def __init__(self, groups, image_shape, filters, latent_channels):
        super().__init__()
        c_in, h, w = image_shape
        if h != w:
            raise ValueError(f"square images expected, got {image_shape}")
        (_, _, s3), enc, ops = conv_geometry(h)
        self.image_shape, self.s3, self.latent_channels = tuple(image_shape), s3, latent_channels
        self.enc = nn.ModuleList([
            GConv2d(groups, c_in, filters, 5, *enc[0]),
            GConv2d(groups, filters, filters, 5, *enc[1]),
            GConv2d(groups, filters, latent_channels, 5, *enc[2]),
        ])
        self.dec = nn.ModuleList([
            GConvTranspose2d(groups, latent_channels, filters, 5, 2, 0, ops[0]),
            GConvTranspose2d(groups, filters, filters, 5, 2, 2, ops[1]),
            GConvTranspose2d(groups, filters, c_in, 5, 2, 2, ops[2]),
        ])

    @staticmethod
    def as_input(x: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 -> float 0..1 (per batch, on the model's device); floats pass through."""
        return x.float() / 255.0 if x.dtype == torch.uint8 else x

    def _encode_map(self, x):
        g = self.groups
        hmap = to_channels(self.as_input(x))
        for i, layer in enumerate(self.enc):
            hmap = layer(hmap)
            if i < 2:
                hmap = F.relu(hmap)
        return from_channels(hmap, g).reshape(g, x.shape[1], -1)  # (G, B, latent_channels*s3*s3)

    def decode_flat(self, flat: torch.Tensor) -> torch.Tensor:
        """(G, B, latent_channels*s3*s3) -> per-pixel logits (G, B, C, H, W)."""
        g, b, _ = flat.shape
        hmap = to_channels(flat.reshape(g, b, self.latent_channels, self.s3, self.s3))
        for i, layer in enumerate(self.dec):
            hmap = layer(hmap)
            if i < 2:
                hmap = F.relu(hmap)
        return from_channels(hmap, g)


class CategoricalVAE(_ConvAutoencoder):
    """The recollection generator: c categorical latent variables of l categories (section 4.2).

    ``encode`` gives the stored code (integer indices (G, B, c)); ``decode`` turns codes into images
    in [0, 1]; ``forward`` returns the reconstruction logits and the code logits for training.
    """

    def __init__(self, c: int, l: int, image_shape=(1, 28, 28), groups: int = 1, tau: float = 1.0,
                 filters: int | None = None):
        if not isinstance(c, int) or c < 1:
            raise ValueError(f"c (number of categorical variables) must be an integer >= 1, got {c!r}")
        if not isinstance(l, int) or l < 2:
            raise ValueError(f"l (categories per variable) must be an integer >= 2, got {l!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        s3 = conv_geometry(image_shape[1])[0][2]
        latent_channels = math.ceil(c * l / (s3 * s3))
        filters = filters or latent_channels
        super().__init__(groups, image_shape, filters, latent_channels)
        self.c, self.l, self.tau = c, l, tau

    def code_logits(self, x) -> torch.Tensor:
        """(G, B, C, H, W) -> logits of the code (G, B, c, l)."""
        flat = self._encode_map(x)
        return flat[..., : self.c * self.l].reshape(flat.shape[0], flat.shape[1], self.c, self.l)

    def decode_onehot(self, z: torch.Tensor) -> torch.Tensor:
        """One-hot (or relaxed) codes (G, B, c, l) -> reconstruction logits (G, B, C, H, W)."""
        g, b = z.shape[:2]
        flat = z.reshape(g, b, self.c * self.l).to(self._param_dtype())
        pad = self.latent_channels * self.s3 * self.s3 - self.c * self.l
        if pad:
            flat = F.pad(flat, (0, pad))
        return self.decode_flat(flat)

    def forward(self, x, generator=None, sample=True):
        """Returns ``(recon_logits, code_logits, index)``; gradients flow straight through."""
        logits = self.code_logits(x)
        z, index = gumbel_softmax_st(logits, self.tau, generator, sample)
        return self.decode_onehot(z), logits, index

    @torch.no_grad()
    def encode(self, x, generator=None, sample=True) -> torch.Tensor:
        """The code stored in a recollection buffer: integer indices (G, B, c) in [0, l)."""
        return gumbel_softmax_st(self.code_logits(x), self.tau, generator, sample)[1]

    @torch.no_grad()
    def decode(self, index: torch.Tensor) -> torch.Tensor:
        """Integer codes (G, B, c) -> recollections, float images in [0, 1] (G, B, C, H, W)."""
        if index.min() < 0 or index.max() >= self.l:
            raise ValueError(f"codes must lie in [0, {self.l}), got values in [{int(index.min())}, {int(index.max())}]")
        return self.decode_trusted(index)

    def _param_dtype(self) -> torch.dtype:
        return self.dec[0].weight.dtype

    def decode_logits(self, index: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits (G, B, C, H, W) of integer codes (G, B, c) that are known to be valid
        (e.g. read from a recollection buffer this model's encoder filled): no range check, no host
        synchronisation; gradients flow into the decoder."""
        return self.decode_onehot(one_hot(index, self.l, self._param_dtype()))

    @torch.no_grad()
    def decode_trusted(self, index: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` without the range check (and so without a host synchronisation): the
        recollections of section 4.3, images in [0, 1], of codes known to be valid."""
        return torch.sigmoid(self.decode_logits(index))


class ContinuousAE(_ConvAutoencoder):
    """Continuous-latent autoencoder of Table 6: ``h`` filters, latent of ``4h`` floats."""

    def __init__(self, h: int, image_shape=(1, 28, 28), groups: int = 1, filters: int | None = None):
        if not isinstance(h, int) or h < 1:
            raise ValueError(f"h must be an integer >= 1, got {h!r}")
        s3 = conv_geometry(image_shape[1])[0][2]
        super().__init__(groups, image_shape, filters or h, h)
        self.h, self.n_floats = h, h * s3 * s3

    def forward(self, x, generator=None, sample=True):
        flat = self._encode_map(x)
        return self.decode_flat(flat), flat, None

    @torch.no_grad()
    def encode(self, x, generator=None, sample=True):
        return self._encode_map(x)

    @torch.no_grad()
    def decode(self, flat):
        return torch.sigmoid(self.decode_flat(flat))


@functools.lru_cache(maxsize=None)
def vae_param_bits(c: int, l: int, image_shape=(1, 28, 28)) -> int:
    """32 bits per parameter of one ``CategoricalVAE(c, l)`` (eq 4's |theta|, section 3.2).

    The model is built on PyTorch's ``meta`` device (no memory is allocated) and counted with
    ``accounting.param_bits``; its size depends on (c, l) through the filter count ``ceil(c l / 4)``.
    """
    with torch.device("meta"):
        model = CategoricalVAE(int(c), int(l), tuple(image_shape))
    return accounting.param_bits(model)
