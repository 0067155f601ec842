"""Models of section 4.2 / appendix A and the trainers' basic contracts."""
import pytest
import torch

from recollect.models import CategoricalVAE, ContinuousAE, gumbel_softmax_st, make_classifier
from recollect.models.vae import conv_geometry
from recollect.train.autoencoder import decode_all, distortion, encode_all, train_autoencoder
from recollect.train.classifier import train_classifier
from recollect.train.common import evaluate, masked_logits

torch.set_num_threads(1)


def test_gumbel_sampler_never_nan_at_extreme_logits():
    logits = torch.tensor([[1e30, -1e30, 0.0], [float("inf"), float("-inf"), 1.0],
                           [-1e38, -1e38, -1e38], [88.0, 88.0, -88.0]], requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        z, idx = gumbel_softmax_st(logits, 1.0, gen)
        (z * torch.arange(3.0)).sum().backward()
        assert torch.isfinite(z).all() and torch.isfinite(logits.grad).all()
        assert torch.equal(z.detach().sum(-1), torch.ones(4))  # forward is exactly one-hot
        assert idx[0] == 0 and idx[1] == 0


def test_straight_through_gradient_is_the_soft_one():
    logits = torch.randn(5, 4, requires_grad=True)
    gen = torch.Generator().manual_seed(3)
    z, _ = gumbel_softmax_st(logits, 1.0, gen)
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    w = torch.randn(5, 4)
    (z * w).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_gumbel_max_frequencies_follow_the_probabilities():
    p = torch.tensor([0.5, 0.3, 0.2])
    logits = p.log().expand(20000, 3)
    _, idx = gumbel_softmax_st(logits, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(idx, minlength=3).float() / 20000
    assert torch.allclose(freq, p, atol=0.015)


@pytest.mark.parametrize("size,expected", [(28, (14, 7, 2)), (32, (16, 8, 2))])
def test_geometry(size, expected):
    assert conv_geometry(size)[0] == expected


def test_filters_are_cl_over_4():
    vae = CategoricalVAE(38, 2)
    assert vae.enc[0].weight.shape[1] == 19 and vae.latent_channels == 19
    assert ContinuousAE(5).n_floats == 20


@pytest.mark.parametrize("bad", [dict(c=0, l=2), dict(c=3, l=1), dict(c=2.5, l=2)])
def test_bad_vae_arguments(bad):
    with pytest.raises(ValueError):
        CategoricalVAE(**bad)


def test_decode_rejects_out_of_range_codes():
    vae = CategoricalVAE(4, 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        vae.decode(torch.full((1, 1, 4), 3))


def test_autoencoder_training_reduces_distortion():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 1, 28, 28) > 0.7).to(torch.uint8) * 255
    vae = CategoricalVAE(16, 2, groups=2)
    before = distortion(vae, x, generator=gen)
    losses = train_autoencoder(vae, x, epochs=3, batch_size=16, lr=torch.tensor([1e-3, 1e-2]), generator=gen)
    after = distortion(vae, x, generator=gen)
    assert len(losses) == 3 and losses[0].shape == (2,)
    assert (after < before).all()
    codes = encode_all(vae, x[:5], generator=gen)
    assert codes.shape == (2, 5, 16) and decode_all(vae, codes).dtype == torch.uint8


def test_classifier_learns_and_masks():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(40) % 4
    x[y == 1] //= 4
    x[y == 2] = 255 - x[y == 2]
    model = make_classifier("mlp", 4, (1, 28, 28), groups=2)
    train_classifier(model, x, y, epochs=15, batch_size=8, lr=1e-3, generator=gen)
    assert (evaluate(model, x, y) > 50).all()
    mask = torch.tensor([[True, True, False, False], [False, False, True, True]])
    out = masked_logits(torch.zeros(1, 2, 4), torch.tensor([0, 1]), mask)
    assert torch.isinf(out[0, 0, 2]) and torch.isinf(out[0, 1, 0]) and out[0, 1, 3] == 0
    with pytest.raises(ValueError, match="unknown classifier"):
        make_classifier("vgg", 10, (1, 28, 28))


def test_trusted_decode_equals_decode_without_a_host_sync():
    """``decode_trusted`` / ``decode_logits``: the recollections of codes known to be valid (a buffer's
    own), with a scatter one-hot instead of ``F.one_hot``'s range check: no host synchronisation."""
    from recollect.models.vae import one_hot
    from recollect.train.capture import SyncCounter
    torch.manual_seed(0)
    vae = CategoricalVAE(6, 3, (1, 28, 28), groups=2)
    idx = torch.randint(0, 3, (2, 5, 6))
    assert torch.equal(one_hot(idx, 3), torch.nn.functional.one_hot(idx, 3).float())
    vae.decode_trusted(idx)
    with SyncCounter() as c:
        out = vae.decode_trusted(idx)
    c.assert_no_syncs("decode_trusted")
    assert torch.equal(out, vae.decode(idx)) and out.shape == (2, 5, 1, 28, 28)


def test_gumbel_sampler_keeps_float64():
    logits = torch.randn(2, 3, 4, dtype=torch.float64)
    z, idx = gumbel_softmax_st(logits, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float64 and idx.shape == (2, 3)
    z, _ = gumbel_softmax_st(logits.to(torch.bfloat16))
    assert z.dtype == torch.float32
