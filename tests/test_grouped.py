"""The fused (grouped) engine computes the same function as G separate models (speed issue)."""
import io

import pytest
import torch

from recollect.grouped import (GroupedAdam, GroupedSGD, grouped_cross_entropy, select_group, stack_groups)
from recollect.models import CategoricalVAE, ContinuousAE, LeNet, MLP, ResNet18

torch.set_num_threads(1)

CASES = [
    (lambda g: LeNet(10, (1, 28, 28), groups=g), (1, 28, 28), 10),
    (lambda g: MLP(10, (1, 28, 28), groups=g), (1, 28, 28), 10),
    (lambda g: ResNet18(5, (3, 32, 32), groups=g, nf=4), (3, 32, 32), 5),
    (lambda g: ResNet18(7, (1, 28, 28), groups=g, nf=4), (1, 28, 28), 7),
]


@pytest.mark.parametrize("make,shape,k", CASES)
def test_fused_training_equals_separate_models(make, shape, k):
    """Same seed, same data: G fused models and G separate models give the same losses and weights
    after several Adam steps, with a different learning rate per group."""
    G, B, steps = 3, 4, 3
    torch.manual_seed(0)
    fused = make(G).double()  # float64: Adam's m/sqrt(v) would amplify float32 rounding noise
    singles = [select_group(fused, g) for g in range(G)]
    lrs = torch.tensor([1e-2, 1e-3, 3e-3])
    opt = GroupedAdam(fused.parameters(), lr=lrs)
    opts = [torch.optim.Adam(m.parameters(), lr=float(lrs[g])) for g, m in enumerate(singles)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.rand((G, B, *shape), generator=gen, dtype=torch.float64)
        y = torch.randint(0, k, (G, B), generator=gen)
        loss = grouped_cross_entropy(fused(x), y)
        opt.zero_grad(); loss.sum().backward(); opt.step()
        for g, (m, o) in enumerate(zip(singles, opts)):
            lg = grouped_cross_entropy(m(x[g:g + 1]), y[g:g + 1])
            o.zero_grad(); lg.sum().backward(); o.step()
            assert torch.allclose(lg, loss[g:g + 1], rtol=1e-9, atol=1e-10)
    for g, m in enumerate(singles):
        for (n, p1), p2 in zip(select_group(fused, g).state_dict().items(), m.state_dict().values()):
            assert torch.allclose(p1, p2, rtol=1e-8, atol=1e-10), n


def test_groups_do_not_leak_gradients():
    torch.manual_seed(0)
    m = LeNet(groups=2)
    x = torch.rand(2, 3, 1, 28, 28)
    out = m(x)
    out[0].sum().backward()
    assert m.conv1.weight.grad[1].abs().sum() == 0
    assert m.conv1.weight.grad[0].abs().sum() > 0


def test_stack_groups_inverts_select_group():
    torch.manual_seed(0)
    m = ResNet18(3, (3, 32, 32), groups=2, nf=4)
    back = stack_groups([select_group(m, 0), select_group(m, 1)])
    for (n, a), b in zip(m.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), n


def test_grouped_sgd_matches_torch_sgd():
    torch.manual_seed(0)
    m = MLP(groups=1)
    ref = select_group(m, 0)
    x, y = torch.rand(1, 5, 1, 28, 28), torch.randint(0, 10, (1, 5))
    opt, ref_opt = GroupedSGD(m.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    for model, o in ((m, opt), (ref, ref_opt)):
        grouped_cross_entropy(model(x), y).sum().backward(); o.step()
    for a, b in zip(m.parameters(), ref.parameters()):
        assert torch.allclose(a, b)


def test_bad_learning_rate_shape():
    m = MLP(groups=2)
    opt = GroupedAdam(m.parameters(), lr=torch.ones(3))
    grouped_cross_entropy(m(torch.rand(2, 1, 1, 28, 28)), torch.zeros(2, 1, dtype=torch.long)).sum().backward()
    with pytest.raises(ValueError, match="shape"):
        opt.step()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_vae_fused_equals_separate(shape):
    G = 2
    torch.manual_seed(0)
    vae = CategoricalVAE(6, 2, shape, groups=G)
    singles = [select_group(vae, g) for g in range(G)]
    x = torch.randint(0, 256, (G, 3, *shape), dtype=torch.uint8)
    rec, logits, idx = vae(x, sample=False)
    assert rec.shape == (G, 3, *shape) and logits.shape == (G, 3, 6, 2) and idx.shape == (G, 3, 6)
    for g, m in enumerate(singles):
        r1, l1, i1 = m(x[g:g + 1], sample=False)
        assert torch.allclose(r1, rec[g:g + 1], atol=1e-5) and torch.equal(i1, idx[g:g + 1])
    assert ContinuousAE(5, shape, groups=G).encode(x).shape == (G, 3, 20)


def test_learning_rate_schedule_takes_effect():
    """Assigning param_groups[...]["lr"] between steps (a schedule) changes the next update, like
    torch.optim.Adam; set_lr changes it in place."""
    torch.manual_seed(0)
    m = MLP(groups=1).double()
    ref = select_group(m, 0)
    opt, ref_opt = GroupedAdam(m.parameters(), lr=1e-2), torch.optim.Adam(ref.parameters(), lr=1e-2)
    x, y = torch.rand(1, 5, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (1, 5))
    for step in range(4):
        if step == 2:
            for o in (opt, ref_opt):
                for g in o.param_groups:
                    g["lr"] = 1e-4
        for model, o in ((m, opt), (ref, ref_opt)):
            o.zero_grad()
            grouped_cross_entropy(model(x), y).sum().backward()
            o.step()
    for a, b in zip(m.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)
    opt.set_lr(torch.tensor([0.0]))
    before = [p.clone() for p in m.parameters()]
    opt.zero_grad(); grouped_cross_entropy(m(x), y).sum().backward(); opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_adam_state_survives_save_and_load():
    """A resumed optimizer continues exactly (what the experiments' checkpoints rely on)."""
    torch.manual_seed(0)
    a = MLP(groups=2).double()
    b = stack_groups([select_group(a, 0), select_group(a, 1)])
    oa, ob = GroupedAdam(a.parameters(), lr=torch.tensor([1e-2, 1e-3])), GroupedAdam(b.parameters(), lr=torch.tensor([1e-2, 1e-3]))
    x, y = torch.rand(2, 5, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (2, 5))
    for step in range(4):
        if step == 2:  # b is rebuilt from a saved state, as after a killed run
            ob = GroupedAdam(b.parameters(), lr=torch.tensor([1e-2, 1e-3]))
            ob.load_state_dict(torch.load(io.BytesIO(oa_state), weights_only=False))
        for model, o in ((a, oa), (b, ob)):
            o.zero_grad(); grouped_cross_entropy(model(x), y).sum().backward(); o.step()
        buf = io.BytesIO()
        torch.save(oa.state_dict(), buf)
        oa_state = buf.getvalue()
    for p1, p2 in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p1, p2, rtol=1e-8, atol=1e-10)
