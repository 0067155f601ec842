"""Classical codecs to set the discrete autoencoder in context (section 3, Figure 2 and beyond).

Every codec stores one image as a fixed number of bits and reconstructs it; distortion is the
appendix A.1 metric (mean absolute pixel error with pixels / 255, :func:`mean_abs_error`) and
compression is ``image bits / code bits`` against the raw 8-bit image (``recollect.accounting``).

* :func:`jpeg_roundtrip` -- Figure 2's JPEG points: Pillow at a given quality; the bits counted are
  the entropy-coded payload only (appendix A.1 subtracts the header: everything up to the end of
  the start-of-scan header, plus the 2-byte end-of-image marker, is the same for every 28x28 image
  and would be stored once for a whole data set).
* :class:`PCACodec` -- the first ``k`` principal components of the training images; each image is
  stored as ``k`` coefficients at ``bits`` bits each: 32 = float32 as stored, fewer = a uniform
  quantizer over the training range of each coefficient (``2**bits`` levels).
* :class:`KMeansCodec` -- a codebook of ``K`` centroids (Lloyd's algorithm); an image is stored as
  the index of its nearest centroid, ``ceil(log2 K)`` bits. It needs ``K`` below the number of
  training images.
* :class:`DownsampleCodec` -- area-average down to ``side x side`` pixels at ``bits`` bits per
  pixel, bilinear back up: ``side * side * bits`` bits per channel.

The parameters of a codec (PCA mean and basis, quantizer ranges, k-means codebook) are a one-off
cost, like the autoencoder's ``|theta|`` of eq 4; :attr:`param_bits` reports them at 32 bits per
number (the codebook at 8 bits per pixel value would be 4x less), and per-image bits exclude them,
as Figure 2 excludes the autoencoder's.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from . import accounting
from .train.probe import tick

__all__ = [
    "mean_abs_error", "jpeg_split", "jpeg_roundtrip", "JpegResult",
    "PCACodec", "KMeansCodec", "DownsampleCodec", "evaluate_codec",
]


def _check_images(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"images must be a uint8 tensor (N, C, H, W) with values 0..255, got {got}")
    if len(x) == 0:
        raise ValueError("no images given: pass at least one image (N >= 1)")
    return x


def mean_abs_error(recon: torch.Tensor, x: torch.Tensor) -> float:
    """Appendix A.1: mean over images of the mean absolute pixel difference, pixels / 255.

    ``recon`` is float in [0, 1] or uint8 0..255, ``x`` uint8 (N, C, H, W). All images have the
    same number of pixels, so this is the mean over every pixel of every image.
    """
    x = _check_images(x)
    r = recon.float() / 255.0 if recon.dtype == torch.uint8 else recon.float()
    if r.shape != x.shape:
        raise ValueError(f"reconstruction shape {tuple(r.shape)} differs from image shape {tuple(x.shape)}")
    per_image = (r - x.float() / 255.0).abs().flatten(1).mean(1)  # float32 per image, summed in float64
    return float(per_image.double().mean())


# ------------------------------------------------------------------------------------------------
# JPEG
# ------------------------------------------------------------------------------------------------
def jpeg_split(data: bytes) -> tuple[int, int, int]:
    """Split a baseline JPEG file into ``(header_bytes, payload_bytes, trailer_bytes)``.

    The header runs from the start-of-image marker to the end of the start-of-scan (SOS) segment:
    JFIF, quantization and Huffman tables, frame and scan headers. The payload is the entropy-coded
    data; the trailer is the end-of-image marker (2 bytes). Only single-scan (baseline) files are
    accepted, as Pillow writes them by default.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file: it does not start with the SOI marker FFD8")
    if data[-2:] != b"\xff\xd9":
        raise ValueError("JPEG file does not end with the EOI marker FFD9; is it truncated?")
    i = 2
    while True:
        if i + 4 > len(data) or data[i] != 0xFF:
            raise ValueError(f"malformed JPEG: expected a marker at byte {i}")
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2:i + 4], "big")
        i += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        if marker in (0xC2, 0xC6, 0xCA, 0xCE):
            raise ValueError("progressive JPEG (several scans) is not supported; save with progressive=False")
    payload = len(data) - i - 2
    if payload < 0:
        raise ValueError("malformed JPEG: no room for the entropy-coded data")
    return i, payload, 2


class JpegResult:
    """Output of :func:`jpeg_roundtrip`: decoded images and per-image byte counts (int64 tensors)."""

    def __init__(self, decoded, total_bytes, header_bytes, payload_bytes):
        self.decoded, self.total_bytes = decoded, total_bytes
        self.header_bytes, self.payload_bytes = header_bytes, payload_bytes

    @property
    def bits_per_image(self) -> float:
        """Mean payload bits per image (header and end marker subtracted, appendix A.1)."""
        return 8.0 * float(self.payload_bytes.double().mean())


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> JpegResult:
    """Encode and decode every image of ``x`` (uint8 (N, 1, H, W)) with Pillow's JPEG at ``quality``.

    Figure 2 / appendix A.1: Pillow, qualities 1, 25, 50, 75 and 100, header subtracted. Pillow's
    defaults are kept (baseline, standard Huffman tables, no optimisation).
    """
    from PIL import Image

    x = _check_images(x)
    if x.shape[1] != 1:
        raise ValueError(f"jpeg_roundtrip takes grayscale images (N, 1, H, W), got {x.shape[1]} channels")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    arr = x[:, 0].cpu().numpy()
    dec = np.empty_like(arr)
    sizes = np.empty((len(arr), 3), dtype=np.int64)
    for i, img in enumerate(arr):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        data = buf.getvalue()
        head, pay, _ = jpeg_split(data)
        sizes[i] = (len(data), head, pay)
        with Image.open(io.BytesIO(data)) as im:
            dec[i] = np.asarray(im.convert("L"))
    t = torch.from_numpy(sizes)
    return JpegResult(torch.from_numpy(dec).unsqueeze(1), t[:, 0], t[:, 1], t[:, 2])


# ------------------------------------------------------------------------------------------------
# learned and plain codecs with a common interface
# ------------------------------------------------------------------------------------------------
def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).float() / 255.0


def _check_bits(bits, maximum: int = 32) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= maximum:
        raise ValueError(f"bits must be an integer in 1..{maximum}, got {bits!r}")
    return bits


class _Codec:
    image_shape: tuple

    @property
    def bits_per_image(self) -> int:
        raise NotImplementedError

    def compression(self) -> float:
        return accounting.compression_ratio(accounting.image_bits(self.image_shape), self.bits_per_image)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class PCACodec(_Codec):
    """The first ``k`` principal components; ``bits`` bits per coefficient (32: float32 as is).

    ``fit(x)`` computes the mean and the principal directions of the training images (pixels / 255)
    from their covariance, in float64. Pass ``basis=(mean, components)`` from :meth:`basis` to share
    one eigendecomposition among codecs of different ``k``. With ``bits < 32`` each coefficient is
    quantized uniformly to ``2**bits`` levels over its range on the training images.
    """

    def __init__(self, k: int, bits: int = 32):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k (number of principal components) must be an integer >= 1, got {k!r}")
        self.k, self.bits = k, _check_bits(bits)

    @staticmethod
    def basis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean (D,), components (D, D))`` of uint8 images x, components by decreasing variance."""
        f = _flat(_check_images(x)).double()
        mean = f.mean(0)
        fc = f - mean
        cov = fc.T @ fc / len(f)
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)
        comps = evecs[:, order]
        # fix each direction's sign (largest-magnitude entry positive) so the basis is reproducible
        idx = comps.abs().argmax(0)
        sign = torch.sign(comps[idx, torch.arange(comps.shape[1])])
        sign[sign == 0] = 1
        return mean.float(), (comps * sign).float()

    def fit(self, x: torch.Tensor, basis=None) -> "PCACodec":
        x = _check_images(x)
        self.image_shape = tuple(x.shape[1:])
        d = int(np.prod(self.image_shape))
        if self.k > d:
            raise ValueError(f"k={self.k} exceeds the {d} pixels of an image")
        mean, comps = basis if basis is not None else self.basis(x)
        self.mean, self.components = mean.to(x.device), comps[:, : self.k].to(x.device)
        coef = (_flat(x) - self.mean) @ self.components
        self.lo, self.hi = coef.min(0).values, coef.max(0).values
        return self

    @property
    def bits_per_image(self) -> int:
        return self.k * self.bits

    @property
    def param_bits(self) -> int:
        extra = 0 if self.bits == 32 else 2 * self.k  # quantizer ranges
        return 32 * (self.mean.numel() + self.components.numel() + extra)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        coef = (_flat(_check_images(x)) - self.mean) @ self.components
        if self.bits == 32:
            return coef
        levels = 2 ** self.bits - 1
        span = (self.hi - self.lo).clamp_min(1e-12)
        return ((coef - self.lo) / span * levels).round().clamp(0, levels).to(torch.int64)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        if self.bits == 32:
            coef = code.float()
        else:
            coef = self.lo + code.float() / (2 ** self.bits - 1) * (self.hi - self.lo)
        out = (coef @ self.components.T + self.mean).clamp(0, 1)
        return out.reshape(len(code), *self.image_shape)


class KMeansCodec(_Codec):
    """A codebook of ``K`` centroids fitted by Lloyd's algorithm; a code is one index, ``ceil(log2 K)`` bits.

    Initialisation: ``K`` distinct training images drawn with ``generator``. Each iteration assigns
    every image to its nearest centroid (squared L2) and moves each centroid to the mean of its
    images; a centroid that loses all its images stays where it was. Stops after ``iters``
    iterations or when no assignment changes. ``K`` must be below the number of training images
    (with ``K >= N`` every image is its own centroid: the codebook *is* the data set).
    """

    def __init__(self, K: int, iters: int = 20, chunk: int = 4096):
        if isinstance(K, bool) or not isinstance(K, int) or K < 2:
            raise ValueError(f"K (codebook size) must be an integer >= 2, got {K!r}")
        self.K, self.iters, self.chunk = K, int(iters), int(chunk)

    def _assign(self, f: torch.Tensor) -> torch.Tensor:
        c2 = (self.centroids ** 2).sum(1)
        out = []
        for s in range(0, len(f), self.chunk):
            fb = f[s:s + self.chunk]
            d = c2.unsqueeze(0) - 2.0 * fb @ self.centroids.T  # + |x|^2, constant per row
            out.append(d.argmin(1))
        return torch.cat(out)

    def fit(self, x: torch.Tensor, generator: torch.Generator) -> "KMeansCodec":
        x = _check_images(x)
        if self.K >= len(x):
            raise ValueError(
                f"k-means needs fewer centroids than training images: K={self.K} >= N={len(x)}; "
                f"use K < {len(x)} (at most {int(math.floor(math.log2(len(x) - 1)))} bits per image here)")
        self.image_shape = tuple(x.shape[1:])
        f = _flat(x)
        init = torch.randperm(len(f), generator=generator)[: self.K].to(f.device)
        self.centroids = f[init].clone()
        assign = None
        self.iterations = 0
        for _ in range(self.iters):
            tick("kmeans")
            new = self._assign(f)
            self.iterations += 1
            if assign is not None and torch.equal(new, assign):
                break
            assign = new
            sums = torch.zeros_like(self.centroids).index_add_(0, assign, f)
            counts = torch.bincount(assign, minlength=self.K).to(f.dtype)
            keep = counts > 0
            self.centroids[keep] = sums[keep] / counts[keep].unsqueeze(1)
        return self

    @property
    def bits_per_image(self) -> int:
        return (self.K - 1).bit_length()  # ceil(log2 K)

    @property
    def param_bits(self) -> int:
        return 32 * self.centroids.numel()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._assign(_flat(_check_images(x)))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.centroids[code].reshape(len(code), *self.image_shape)


class DownsampleCodec(_Codec):
    """Plain downsampling: area average to ``side x side``, ``bits`` bits per pixel, bilinear back up.

    Nothing is learned. Bits per image are ``channels * side * side * bits``; ``bits=1`` thresholds
    the small image at one half.
    """

    def __init__(self, side: int, bits: int = 8):
        if isinstance(side, bool) or not isinstance(side, int) or side < 1:
            raise ValueError(f"side must be an integer >= 1, got {side!r}")
        self.side, self.bits = side, _check_bits(bits, 8)
        self.image_shape = None

    def fit(self, x: torch.Tensor, *_, **__) -> "DownsampleCodec":
        x = _check_images(x)
        self.image_shape = tuple(x.shape[1:])
        if self.side > min(self.image_shape[1:]):
            raise ValueError(f"side={self.side} is larger than the images {self.image_shape[1:]}")
        return self

    @property
    def bits_per_image(self) -> int:
        return self.image_shape[0] * self.side * self.side * self.bits

    param_bits = 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_images(x)
        if self.image_shape is None:
            self.fit(x)
        small = F.adaptive_avg_pool2d(x.float() / 255.0, self.side)
        levels = 2 ** self.bits - 1
        return (small * levels).round().clamp(0, levels).to(torch.int64)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        small = code.float() / (2 ** self.bits - 1)
        h, w = self.image_shape[1:]
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


def evaluate_codec(codec, x: torch.Tensor, batch_size: int = 10000) -> dict:
    """``{bits, compression, distortion}`` of a fitted codec on uint8 images x (appendix A.1 metric)."""
    tick("codecs")
    x = _check_images(x)
    total = 0.0
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        total += mean_abs_error(codec.reconstruct(xb), xb) * len(xb)
    return {"bits": codec.bits_per_image, "compression": codec.compression(), "distortion": total / len(x)}
