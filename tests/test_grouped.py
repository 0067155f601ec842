"""The fused (grouped) engine computes the same function as G separate models (speed issue)."""
import copy
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


# ------------------------------------------------------------------------------------------------
# the multi-tensor, capturable optimizers
# ------------------------------------------------------------------------------------------------
def _grouped_params(G, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(G, 3, 4), (G, 5), (G, 2, 2, 3)]
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def _fake_grads(params, step, live=None):
    """Deterministic gradients for step ``step``; params outside ``live`` get none."""
    gen = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        p.grad = g if live is None or i in live else None


def _separate(params, G):
    """G single-group copies of grouped parameters (group g: every parameter's slice [g:g+1])."""
    return [[p.detach()[g:g + 1].clone().requires_grad_() for p in params] for g in range(G)]


def _copy_grads(params, singles):
    for g, ps in enumerate(singles):
        for p, q in zip(params, ps):
            q.grad = None if p.grad is None else p.grad[g:g + 1].clone()


def _step_all(opt, refs, params, singles, step, live=None):
    """One step of the grouped optimizer and of every reference, on the same fake gradients."""
    _fake_grads(params, step, live)
    _copy_grads(params, singles)
    opt.step()
    for r in refs:
        r.step()


def _assert_groups_equal(params, singles):
    for g, ps in enumerate(singles):
        for p, q in zip(params, ps):
            assert torch.allclose(p[g:g + 1], q, rtol=1e-12, atol=1e-14)


def test_per_group_rates_equal_separate_torch_adams_in_float64():
    """G groups with G learning rates (two param groups, one with a (G,) tensor, one with a float)
    equal G separate torch.optim.Adam, including steps where some parameters have no gradient."""
    G = 3
    params = _grouped_params(G)
    lrs = torch.tensor([1e-2, 1e-3, 3e-3], dtype=torch.float64)
    opt = GroupedAdam([{"params": params[:2], "lr": lrs}, {"params": params[2:], "lr": 5e-3}], betas=(0.8, 0.99))
    singles = _separate(params, G)
    refs = [torch.optim.Adam([{"params": ps[:2], "lr": float(lrs[g])}, {"params": ps[2:], "lr": 5e-3}],
                             betas=(0.8, 0.99)) for g, ps in enumerate(singles)]
    for step in range(6):
        _step_all(opt, refs, params, singles, step, live=None if step % 3 else {0, 2})  # steps 0, 3: param 1 no grad
    _assert_groups_equal(params, singles)
    assert [float(opt.state[p]["step"]) for p in params] == [6.0, 4.0, 6.0]


def test_sgd_with_momentum_equals_torch_sgd_per_group():
    G = 2
    params = _grouped_params(G, seed=1)
    lrs = torch.tensor([0.1, 0.02], dtype=torch.float64)
    opt = GroupedSGD(params, lr=lrs, momentum=0.9)
    singles = _separate(params, G)
    refs = [torch.optim.SGD(ps, lr=float(lrs[g]), momentum=0.9) for g, ps in enumerate(singles)]
    for step in range(4):
        _step_all(opt, refs, params, singles, step)
    _assert_groups_equal(params, singles)


@pytest.mark.parametrize("how", ["set_lr", "assign"])
def test_learning_rate_changed_mid_run_in_place(how):
    """set_lr (and a reassigned group["lr"]) changes the next update like a new rate in torch.optim.Adam,
    writing into the same tensors (what a captured CUDA graph reads)."""
    G = 2
    params = _grouped_params(G, seed=2)
    opt = GroupedAdam(params, lr=torch.tensor([1e-2, 1e-3], dtype=torch.float64))
    singles = _separate(params, G)
    refs = [torch.optim.Adam(ps, lr=lr) for ps, lr in zip(singles, (1e-2, 1e-3))]
    new = torch.tensor([3e-4, 2e-2], dtype=torch.float64)
    for step in range(5):
        if step == 2:
            b = opt._buckets[0][0]
            ptrs = (b.lr.data_ptr(), [t.data_ptr() for t in b.lr_full])
            if how == "set_lr":
                opt.set_lr(new)
            else:
                opt.param_groups[0]["lr"] = new
                opt.sync_lr()
            assert (b.lr.data_ptr(), [t.data_ptr() for t in b.lr_full]) == ptrs
            assert torch.equal(b.lr_full[0][1], torch.full_like(b.lr_full[0][1], 2e-2))
            for r, lr in zip(refs, new.tolist()):
                r.param_groups[0]["lr"] = lr
        _step_all(opt, refs, params, singles, step)
    _assert_groups_equal(params, singles)
    with pytest.raises(ValueError, match="shape"):
        opt.set_lr(torch.ones(3))


def _lerp_adam(ps):
    opt = GroupedAdam(ps, lr=torch.tensor([1e-2, 1e-3]))
    opt.cpu_direct = False  # the CUDA arithmetic
    return opt


@pytest.mark.parametrize("make", [lambda ps: GroupedAdam(ps, lr=torch.tensor([1e-2, 1e-3])), _lerp_adam,
                                  lambda ps: GroupedSGD(ps, lr=torch.tensor([0.1, 0.03]), momentum=0.5)])
def test_state_dict_round_trip_mid_run_is_bit_identical(make):
    """Save after 3 steps, rebuild the optimizer from the saved bytes, continue: the weights equal an
    unbroken run's bit for bit, and the step counts live on the parameters' device."""
    G = 2
    a = _grouped_params(G, seed=3, dtype=torch.float32)
    b = [p.detach().clone().requires_grad_() for p in a]
    oa, ob = make(a), make(b)
    for step in range(7):
        if step == 3:
            buf = io.BytesIO()
            torch.save(ob.state_dict(), buf)
            ob = make(b)
            ob.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
            for p in b:
                if "step" in ob.state[p]:
                    assert ob.state[p]["step"].device == p.device and float(ob.state[p]["step"]) == 3
        for ps, o in ((a, oa), (b, ob)):
            _fake_grads(ps, step)
            o.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)


def test_load_state_dict_copies_in_place_and_rejects_foreign_state():
    """A graph captured before a resume keeps reading the same state tensors; state of another model
    (another group count) is a ValueError."""
    params = _grouped_params(2, seed=4)
    opt = GroupedAdam(params, lr=1e-3)
    _fake_grads(params, 0)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    _fake_grads(params, 1)
    opt.step()
    ptrs = [opt.state[p]["m"].data_ptr() for p in params]
    opt.load_state_dict(saved)
    assert [opt.state[p]["m"].data_ptr() for p in params] == ptrs
    assert float(opt.state[params[0]]["step"]) == 1
    other = _grouped_params(3, seed=4)
    o3 = GroupedAdam(other, lr=1e-3)
    with pytest.raises(ValueError, match="another model"):
        o3.load_state_dict(saved)
    for p in other:  # unchanged, still usable
        p.grad = torch.ones_like(p)
    o3.step()
    assert float(o3.state[other[0]]["step"]) == 1


def test_legacy_adam_state_loads():
    """Checkpoints of the earlier per-parameter GroupedAdam (keys step/m/v/lr/lr_src) still load."""
    params = _grouped_params(2, seed=5)
    opt = GroupedAdam(params, lr=1e-3)
    legacy = {"state": {i: {"step": torch.tensor(4.0, dtype=torch.float64), "m": torch.full_like(p, 0.5),
                            "v": torch.full_like(p, 0.25), "lr": torch.full((2,) + (1,) * (p.dim() - 1), 1e-3),
                            "lr_src": 1e-3} for i, p in enumerate(params)},
              "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "params": [0, 1, 2]}]}
    opt.load_state_dict(legacy)
    st = opt.state[params[1]]
    assert float(st["step"]) == 4 and torch.equal(st["m"], torch.full_like(params[1], 0.5))


def test_cpu_direct_cuda_lerp_and_plain_paths_agree():
    """The CPU's direct path (fused kernel per run of equal rates), the CUDA arithmetic (unit-rate
    fused kernel, then lerp with each element's rate) and the plain-operations fallback agree."""
    G = 3
    lrs = torch.tensor([1e-2, 1e-2, 1e-3], dtype=torch.float64)
    runs = []
    for path in ("direct", "lerp", "plain"):
        params = _grouped_params(G, seed=6)
        opt = GroupedAdam(params, lr=lrs)
        opt.cpu_direct = path == "direct"
        opt.init_state()
        b = opt._buckets[0][0]
        b.path = path
        assert b.runs == [(0, 2, 1e-2), (2, 3, 1e-3)]
        for step in range(4):
            _fake_grads(params, step, live=None if step != 2 else {0, 1})
            opt.step()
            if step == 1:
                opt.set_lr(torch.tensor([1e-3, 2e-3, 2e-3], dtype=torch.float64))
        runs.append(params)
    for other in runs[1:]:
        for p, q in zip(runs[0], other):
            assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)


def test_make_optimizer_names():
    from recollect.grouped import make_optimizer
    ps = _grouped_params(2)
    assert isinstance(make_optimizer(ps, "adam", [1e-3, 1e-4]), GroupedAdam)
    assert isinstance(make_optimizer(ps, "sgd", 0.1), GroupedSGD)
    with pytest.raises(ValueError, match="adam"):
        make_optimizer(ps, "rmsprop", 0.1)
