"""recollect.baselines: the codecs beside the discrete VAE (JPEG of Figure 2; PCA, k-means, downsampling).

Synthetic images only: no data directory needed, each test well under a second.
"""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from recollect import baselines as B

torch.set_num_threads(1)


def digits(n=64, seed=0):
    """Sparse MNIST-like strokes: mostly 0, some 255, a few greys (uint8 (n, 1, 28, 28))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for i in range(n):
        r, c = torch.randint(6, 20, (2,), generator=g).tolist()
        x[i, 0, r - 4:r + 4, c - 1:c + 2] = 255
        x[i, 0, r - 1:r + 1, c - 5:c + 5] = torch.randint(100, 256, (1,), generator=g).item()
    return x


# ---------------------------------------------------------------------------------------------- metric
def test_mean_abs_error_by_hand():
    x = torch.tensor([0, 255, 51, 102], dtype=torch.uint8).view(1, 1, 2, 2)
    recon = torch.tensor([0.0, 0.5, 0.2, 0.0]).view(1, 1, 2, 2)
    # |0-0| + |0.5-1| + |0.2-0.2| + |0-0.4| = 0.9 over 4 pixels
    assert B.mean_abs_error(recon, x) == pytest.approx(0.225, abs=1e-6)
    assert B.mean_abs_error(x, x) == 0.0
    assert B.mean_abs_error((recon * 255).round().to(torch.uint8), x) == pytest.approx(0.225, abs=1 / 255)


def test_mean_abs_error_rejects_bad_input():
    x = digits(2)
    with pytest.raises(ValueError, match="uint8"):
        B.mean_abs_error(x.float(), x.float())
    with pytest.raises(ValueError, match="shape"):
        B.mean_abs_error(torch.zeros(2, 1, 27, 28), x)


# ---------------------------------------------------------------------------------------------- JPEG
def _jpeg_bytes(img, q):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=q)
    return buf.getvalue()


def test_jpeg_split_adds_up_and_header_is_constant():
    x = digits(8).numpy()[:, 0]
    heads = set()
    for img in x:
        data = _jpeg_bytes(img, 50)
        head, pay, tail = B.jpeg_split(data)
        assert head + pay + tail == len(data)
        assert data.rfind(b"\xff\xda", 0, head) > 0 and pay > 0 and tail == 2  # the header ends with the SOS segment
        heads.add(head)
    assert len(heads) == 1  # the tables do not depend on the image: subtracting them is exact


def test_jpeg_split_rejects_non_jpeg_and_progressive():
    with pytest.raises(ValueError, match="SOI"):
        B.jpeg_split(b"\x89PNG....")
    buf = io.BytesIO()
    Image.fromarray(digits(1).numpy()[0, 0]).save(buf, format="JPEG", quality=50, progressive=True)
    with pytest.raises(ValueError, match="progressive"):
        B.jpeg_split(buf.getvalue())


def test_jpeg_roundtrip_quality_trades_bits_for_distortion():
    x = digits(32)
    lo, hi = B.jpeg_roundtrip(x, 1), B.jpeg_roundtrip(x, 100)
    assert lo.decoded.shape == x.shape and lo.decoded.dtype == torch.uint8
    assert torch.equal(lo.total_bytes, lo.header_bytes + lo.payload_bytes + 2)
    assert lo.bits_per_image < hi.bits_per_image
    assert lo.bits_per_image == pytest.approx(8 * lo.payload_bytes.double().mean().item())
    assert B.mean_abs_error(hi.decoded, x) < 0.01 < B.mean_abs_error(lo.decoded, x)


@pytest.mark.parametrize("q", [0, 101, 50.0, True])
def test_jpeg_quality_checked(q):
    with pytest.raises(ValueError, match="quality"):
        B.jpeg_roundtrip(digits(1), q)


# ---------------------------------------------------------------------------------------------- PCA
def test_pca_basis_is_orthonormal_and_sorted():
    x = digits(200)
    mean, comps = B.PCACodec.basis(x)
    assert comps.shape == (784, 784)
    assert torch.allclose(comps.T @ comps, torch.eye(784), atol=1e-4)
    f = x.flatten(1).float() / 255 - mean
    var = ((f @ comps[:, :20]) ** 2).mean(0)
    assert (var[:-1] >= var[1:] - 1e-6).all()


def test_pca_full_rank_float32_is_lossless_and_bits_are_counted():
    x = digits(100)
    codec = B.PCACodec(784, 32).fit(x)
    assert codec.bits_per_image == 784 * 32
    assert B.mean_abs_error(codec.reconstruct(x), x) < 1e-4
    assert B.PCACodec(5, 8).fit(x).bits_per_image == 40
    assert B.PCACodec(5, 8).fit(x).compression() == pytest.approx(6272 / 40)


def test_pca_distortion_falls_with_k_and_8bit_costs_little():
    x = digits(300)
    basis = B.PCACodec.basis(x)
    d = [B.evaluate_codec(B.PCACodec(k, 32).fit(x, basis), x)["distortion"] for k in (1, 4, 16, 64)]
    assert all(a > b for a, b in zip(d, d[1:]))
    d8 = B.evaluate_codec(B.PCACodec(16, 8).fit(x, basis), x)["distortion"]
    assert d[2] <= d8 < d[2] + 0.01
    codes = B.PCACodec(16, 8).fit(x, basis).encode(x)
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() <= 255


def test_pca_bad_k():
    with pytest.raises(ValueError):
        B.PCACodec(0)
    with pytest.raises(ValueError, match="exceeds"):
        B.PCACodec(785).fit(digits(3))


# ---------------------------------------------------------------------------------------------- k-means
def test_kmeans_needs_fewer_centroids_than_images():
    x = digits(16)
    with pytest.raises(ValueError, match="fewer centroids"):
        B.KMeansCodec(16).fit(x, torch.Generator().manual_seed(0))
    B.KMeansCodec(8).fit(x, torch.Generator().manual_seed(0))


def test_kmeans_finds_separated_clusters_and_counts_log2_bits():
    g = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 40, (20, 1, 28, 28), generator=g, dtype=torch.uint8)
    light = torch.randint(215, 256, (20, 1, 28, 28), generator=g, dtype=torch.uint8)
    x = torch.cat([dark, light])
    truth = torch.arange(40) >= 20
    for seed in range(5):  # whichever two images start as centroids, Lloyd separates the clusters
        codec = B.KMeansCodec(2, iters=20).fit(x, torch.Generator().manual_seed(seed))
        idx = codec.encode(x)
        assert torch.equal(idx == idx[-1], truth)
        # each centroid is its cluster's mean, so the decoded images are the cluster means
        means = torch.stack([dark.flatten(1).float().mean(0), light.flatten(1).float().mean(0)]) / 255
        assert torch.allclose(codec.decode(idx).flatten(1), means[truth.long()], atol=1e-5)
    assert codec.bits_per_image == 1
    assert B.KMeansCodec(4).bits_per_image == 2
    assert B.KMeansCodec(5).bits_per_image == 3  # ceil(log2 5)


def test_kmeans_is_deterministic_given_the_generator():
    x = digits(64)
    a = B.KMeansCodec(8).fit(x, torch.Generator().manual_seed(5))
    b = B.KMeansCodec(8).fit(x, torch.Generator().manual_seed(5))
    assert torch.equal(a.centroids, b.centroids)


def test_kmeans_distortion_falls_with_K():
    x = digits(256)
    d = [B.evaluate_codec(B.KMeansCodec(2 ** b, iters=15).fit(x, torch.Generator().manual_seed(0)), x)["distortion"]
         for b in (1, 3, 6)]
    assert d[0] > d[1] > d[2]


# ---------------------------------------------------------------------------------------------- downsampling
def test_downsample_full_size_8bit_is_exact_and_bits_counted():
    x = digits(10)
    codec = B.DownsampleCodec(28, 8).fit(x)
    assert codec.bits_per_image == 28 * 28 * 8
    assert B.mean_abs_error(codec.reconstruct(x), x) < 1e-6
    assert B.DownsampleCodec(7, 8).fit(x).bits_per_image == 392
    assert B.DownsampleCodec(7, 1).fit(x).bits_per_image == 49


def test_downsample_one_bit_codes_are_binary_and_coarser_is_worse():
    x = digits(50)
    code = B.DownsampleCodec(14, 1).fit(x).encode(x)
    assert set(code.unique().tolist()) <= {0, 1}
    d = [B.evaluate_codec(B.DownsampleCodec(s, 8).fit(x), x)["distortion"] for s in (2, 7, 14)]
    assert d[0] > d[1] > d[2]


def test_downsample_bad_arguments():
    with pytest.raises(ValueError):
        B.DownsampleCodec(0)
    with pytest.raises(ValueError):
        B.DownsampleCodec(4, bits=9)
    with pytest.raises(ValueError, match="larger"):
        B.DownsampleCodec(29).fit(digits(2))


def test_evaluate_codec_batches_agree():
    x = digits(30)
    codec = B.PCACodec(10, 8).fit(x)
    a = B.evaluate_codec(codec, x, batch_size=7)
    b = B.evaluate_codec(codec, x, batch_size=1000)
    assert a["distortion"] == pytest.approx(b["distortion"], abs=1e-9)
    assert a["bits"] == 80 and a["compression"] == pytest.approx(78.4)
    assert np.isfinite(a["distortion"])
