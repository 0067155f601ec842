"""The lifelong harness (section 5.2), GEM's QP and projection, iCaRL's herding, on tiny synthetic streams."""
import itertools

import pytest
import torch

from recollect import accounting
from recollect.grouped import select_group
from recollect.models import CategoricalVAE, make_classifier
from recollect.train.common import masked_logits
from recollect.train.gem import GEMMemory, project_gradient, solve_box_qp, task_gradients
from recollect.train.icarl import ExemplarStore, herding, icarl_runnable
from recollect.train.lifelong import (LifelongConfig, LifelongHarness, can_fuse, fuse_groups, plan_storage,
                                      run_lifelong)

from lifelong_helpers import synth

torch.set_num_threads(1)
KW = dict(model_kwargs={"nf": 2}, replay=3)




# ------------------------------------------------------------------------------------------------
# GEM's quadratic program
# ------------------------------------------------------------------------------------------------
def test_qp_one_variable():
    v = solve_box_qp(torch.tensor([[2.0]]), torch.tensor([-1.0]))
    assert v.item() == pytest.approx(0.5, abs=1e-6)
    v = solve_box_qp(torch.tensor([[2.0]]), torch.tensor([1.0]))
    assert v.item() == pytest.approx(0.0, abs=1e-9)
    v = solve_box_qp(torch.tensor([[2.0]]), torch.tensor([-1.0]), lower=0.8)
    assert v.item() == pytest.approx(0.8, abs=1e-6)


def test_qp_diagonal_is_clipped_newton():
    P = torch.diag(torch.tensor([1.0, 4.0, 2.0]))
    q = torch.tensor([-3.0, 2.0, -1.0])
    assert torch.allclose(solve_box_qp(P, q), torch.tensor([3.0, 0.0, 0.5]), atol=1e-6)


def _brute_force(P, q, lower):
    """Exact solution by enumerating active sets (KKT), for small n."""
    n = len(q)
    best, best_val = None, float("inf")
    for free in itertools.product([0, 1], repeat=n):
        F = [i for i in range(n) if free[i]]
        v = torch.full((n,), lower, dtype=torch.float64)
        if F:
            A = [i for i in range(n) if not free[i]]
            rhs = -q[F] - (P[F][:, A] @ v[A] if A else 0)
            try:
                v[F] = torch.linalg.solve(P[F][:, F], rhs)
            except RuntimeError:
                continue
        if (v < lower - 1e-9).any():
            continue
        val = 0.5 * v @ P @ v + q @ v
        if val < best_val:
            best, best_val = v, val
    return best


@pytest.mark.parametrize("seed", range(5))
def test_qp_matches_brute_force_on_random_problems(seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(4, 6, generator=g, dtype=torch.float64)
    P = M @ M.T + 0.1 * torch.eye(4, dtype=torch.float64)
    q = torch.randn(4, generator=g, dtype=torch.float64) * 3
    for lower in (0.0, 0.5):
        v = solve_box_qp(P, q, lower=lower, iters=20000, tol=1e-12)
        ref = _brute_force(P, q, lower)
        assert torch.allclose(v, ref, atol=1e-6), (v, ref)


def test_qp_is_batched():
    P = torch.stack([torch.tensor([[2.0]]), torch.tensor([[1.0]])])
    q = torch.tensor([[-1.0], [-3.0]])
    assert torch.allclose(solve_box_qp(P, q), torch.tensor([[0.5], [3.0]]), atol=1e-6)


def test_gem_projection_by_hand():
    # one violated constraint: g = (1, 0), g_1 = (-1, 1); the projection onto <x, g_1> >= 0 is (0.5, 0.5)
    g = torch.tensor([[1.0, 0.0]])
    M = torch.tensor([[[-1.0, 1.0]]])
    out, viol = project_gradient(g, M, margin=0.0)
    assert viol.tolist() == [True]
    assert torch.allclose(out, torch.tensor([[0.5, 0.5]]), atol=1e-6)
    # two violated orthogonal constraints: the cone is the negative quadrant, projection is 0
    out, _ = project_gradient(torch.tensor([[1.0, 1.0]]), torch.tensor([[[-1.0, 0.0], [0.0, -1.0]]]), margin=0.0)
    assert torch.allclose(out, torch.zeros(1, 2), atol=1e-6)
    # one violated, one satisfied: only the first component is removed
    out, _ = project_gradient(torch.tensor([[1.0, 1.0]]), torch.tensor([[[-1.0, 0.0], [0.0, 1.0]]]), margin=0.0)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0]]), atol=1e-6)


def test_gem_projection_keeps_non_violating_groups_and_satisfies_constraints():
    g = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    M = torch.tensor([[[-1.0, 1.0, 0.5], [0.2, -1.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    out, viol = project_gradient(g, M, margin=0.5)
    assert viol.tolist() == [True, False]
    assert torch.equal(out[1], g[1])
    assert (torch.bmm(M[:1], out[:1].unsqueeze(-1)) >= -1e-5).all()
    # with the margin (GEM's memory strength) the update leans further towards the memories
    out0, _ = project_gradient(g, M, margin=0.0)
    assert (torch.bmm(M[:1], out[:1].unsqueeze(-1)).squeeze() >= torch.bmm(M[:1], out0[:1].unsqueeze(-1)).squeeze() - 1e-6).all()


def test_task_gradients_equal_per_model_per_task_gradients():
    torch.manual_seed(0)
    model = make_classifier("resnet18", 6, (1, 28, 28), groups=2, nf=2)
    x = torch.randint(0, 256, (3, 2, 1, 28, 28), dtype=torch.uint8)
    y = torch.tensor([[0, 1], [2, 3], [4, 5]])
    task = torch.arange(3)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    for t in range(3):
        mask[t, 2 * t:2 * t + 2] = True
    M = task_gradients(model, x, y, task, mask)
    assert M.shape[:2] == (2, 3)
    for g in range(2):
        one = select_group(model, g)
        for p in range(3):
            one.zero_grad()
            logits = masked_logits(one(x[p].unsqueeze(0)), task[p].view(1, 1).expand(1, 2), mask)
            torch.nn.functional.cross_entropy(logits[0], y[p]).backward()
            ref = torch.cat([q.grad.reshape(-1) for q in one.parameters()])
            assert torch.allclose(M[g, p], ref, atol=1e-5), (g, p)


def test_gem_memory_is_a_ring_buffer_per_task():
    mem = GEMMemory(2, 2, (1, 2, 2))
    for i in range(5):
        mem.add(0, torch.full((1, 2, 2), i, dtype=torch.uint8), torch.tensor(i))
    assert sorted(mem.y[0].tolist()) == [3, 4]  # the task's latest examples
    with pytest.raises(ValueError):
        mem.tasks_before(2)  # task 1 has no memories yet


# ------------------------------------------------------------------------------------------------
# iCaRL
# ------------------------------------------------------------------------------------------------
def test_herding_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]]).view(1, 1, 3, 2)
    sel = herding(f, torch.ones(1, 3, dtype=torch.bool), 3)
    assert sel.view(-1).tolist() == [2, 1, 0]


def test_herding_runs_out_per_class():
    f = torch.nn.functional.normalize(torch.randn(2, 2, 3, 4), dim=-1)
    valid = torch.tensor([[True, True, True], [True, False, False]])
    sel = herding(f, valid, 3)
    assert (sel[:, 1, 1:] == -1).all() and (sel[:, 1, 0] == 0).all()
    assert sorted(sel[0, 0].tolist()) == [0, 1, 2]


def test_icarl_exemplar_budget_shrinks_with_classes():
    torch.manual_seed(0)
    s = synth(T=2, per=12, cls=3)
    model = make_classifier("resnet18", 6, (1, 28, 28), groups=2, nf=2)
    store = ExemplarStore(12, list(range(6)), 3, (1, 28, 28), 6, 2)
    store.update(model, s.train[0].x, s.train[0].y, 0)
    assert store.m == 4 and len(store) == 12
    store.update(model, s.train[1].x, s.train[1].y, 1)
    assert store.m == 2 and len(store) == 12
    assert store.class_has_exemplars().all()
    assert not icarl_runnable(5, 6)[0]


# ------------------------------------------------------------------------------------------------
# storage accounting
# ------------------------------------------------------------------------------------------------
def test_storage_plans_of_the_paper():
    om = (1, 28, 28)
    assert plan_storage(LifelongConfig("recollection", budget=10, code=(62, 2)), om, 50).capacity == 1011
    assert plan_storage(LifelongConfig("recollection", budget=50, code=(312, 2)), om, 50).capacity == 1005
    cifar = (3, 32, 32)
    # Table 3 prints 5,000 recollections of (620, 3) codes in 200 images' bits: 983 bits each as one
    # mixed-radix number; the buffer packs in 62-bit-safe chunks, 984 bits, so 4,995 fit
    p3 = plan_storage(LifelongConfig("recollection", budget=200, code=(620, 3)), cifar, 20)
    assert p3.bits_per_item == 984 and p3.capacity == 4995
    assert accounting.recollections_that_fit(200 * 24576, accounting.mixed_radix_bits(620, 3)) == 5000
    # Table 4: the total constraint charges the autoencoder: 1,392 codes of (76, 2), as the paper prints
    p = plan_storage(LifelongConfig("recollection", budget=200, code=(76, 2), budget_kind="total"), cifar, 20)
    assert p.fixed_bits == accounting.param_bits(CategoricalVAE(76, 2, cifar))
    assert p.capacity == 1392
    assert plan_storage(LifelongConfig("rehearsal", budget=10), om, 50).used_bits == 10 * 6272
    gem = plan_storage(LifelongConfig("gem", budget=10), om, 50)
    assert not gem.runnable and "fewer memories (10) than tasks (50)" in gem.reason
    assert plan_storage(LifelongConfig("gem", budget=50), om, 50).capacity == 50
    assert not plan_storage(LifelongConfig("icarl", budget=50), om, 50, 1623).runnable


@pytest.mark.parametrize("bad", [dict(method="nope"), dict(method="online", budget=3), dict(method="rehearsal"),
                                 dict(method="recollection", budget=2), dict(method="online", steps=0)])
def test_bad_configs(bad):
    with pytest.raises(ValueError):
        LifelongConfig(**bad)


# ------------------------------------------------------------------------------------------------
# the harness
# ------------------------------------------------------------------------------------------------
def test_every_method_runs_and_reports_shapes():
    s = synth()
    for cfg in [LifelongConfig("online", **KW), LifelongConfig("rehearsal", budget=4, **KW),
                LifelongConfig("recollection", budget=1, code=(8, 2), steps=2, **KW),
                LifelongConfig("gem", budget=3, **KW), LifelongConfig("icarl", budget=9, **KW)]:
        [r] = run_lifelong(s, cfg, [0, 1])
        assert r.runnable and r.complete
        assert r.acc.shape == (2, 4, 3) and not torch.isnan(r.acc).any()
        assert ((r.acc >= 0) & (r.acc <= 100)).all()
        assert r.steps == cfg.steps * 24
        assert len(r.summary()) == 2


def test_methods_that_cannot_run_say_why():
    s = synth()
    [g] = run_lifelong(s, LifelongConfig("gem", budget=2, **KW), [0])
    assert not g.runnable and "fewer memories (2) than tasks (3)" in g.storage["reason"]
    [i] = run_lifelong(s, LifelongConfig("icarl", budget=5, **KW), [0])
    assert not i.runnable and "than classes" in i.storage["reason"]
    assert g.summary()["ACC_task"].isna().all()


def test_buffers_fill_by_reservoir_and_differ_per_group():
    s = synth(per=10)
    h = LifelongHarness(s, LifelongConfig("rehearsal", budget=5, **KW), [0, 1])
    h.run()
    buf = h.blocks[0].buffer
    assert buf.seen == 30 and len(buf) == 5
    assert not torch.equal(buf.y[0], buf.y[1])  # reservoir draws differ per group


def test_recollection_buffer_holds_packed_codes_within_budget():
    s = synth()
    h = LifelongHarness(s, LifelongConfig("recollection", budget=1, code=(8, 2), **KW), [0])
    assert h.blocks[0].buffer.capacity == 6272 // 8
    assert h.blocks[0].buffer.code_bits_total <= 6272
    h.run()
    assert len(h.blocks[0].buffer) == 24


def test_decoder_is_frozen_right_before_each_example():
    s = synth()
    h = LifelongHarness(s, LifelongConfig("recollection", budget=1, code=(8, 2), steps=2, **KW), [0])
    b = h.blocks[0]
    x, y = h.train[0]
    h.observe(x[:1], y[:1], 0)
    h.observe(x[1:2], y[1:2], 0)
    # the frozen copy is the decoder of before the second example, not the trained one
    assert any(not torch.equal(p, q) for p, q in zip(b._dec, b._frozen_dec))
    b.freeze_decoder()
    assert all(torch.equal(p, q) for p, q in zip(b._dec, b._frozen_dec))


def test_copies_of_the_example_give_the_single_example_gradient():
    """Online batches pad with copies: the gradient equals that of the example alone."""
    torch.manual_seed(0)
    model = make_classifier("resnet18", 6, (1, 28, 28), groups=1, nf=2)
    x = torch.rand(1, 1, 1, 28, 28)
    y = torch.tensor([[3]])
    grads = []
    for B in (1, 4):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x.expand(1, B, 1, 28, 28))[0], y.expand(1, B)[0]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_fused_configs_compute_what_they_compute_alone():
    s = synth()
    cfgs = [LifelongConfig("online", **KW), LifelongConfig("rehearsal", budget=4, **KW),
            LifelongConfig("recollection", budget=1, code=(8, 2), **KW)]
    assert fuse_groups(cfgs + [LifelongConfig("gem", budget=3, **KW)]) == [[0, 1, 2], [3]]
    assert not can_fuse(cfgs[0], LifelongConfig("online", steps=3, **KW))
    fused = LifelongHarness(s, cfgs, [0, 1])
    fused.run()
    for j, c in enumerate(cfgs):
        alone = LifelongHarness(s, c, [0, 1])
        alone.run()
        for p, q in zip(fused.model.parameters(), alone.model.parameters()):
            assert torch.allclose(p[2 * j:2 * j + 2], q, atol=1e-4)
    with pytest.raises(ValueError):
        LifelongHarness(s, [cfgs[0], LifelongConfig("gem", budget=3, **KW)], [0])


@pytest.mark.parametrize("method,extra", [("recollection", dict(budget=1, code=(8, 2))), ("gem", dict(budget=3)),
                                          ("icarl", dict(budget=9))])
def test_resume_from_a_checkpoint_gives_the_same_run(method, extra):
    s = synth()
    cfg = LifelongConfig(method, **extra, **KW)
    [full] = run_lifelong(s, cfg, [0, 1])
    saved = {}
    h = LifelongHarness(s, cfg, [0, 1])
    h.run(on_task_end=lambda t, hh: saved.setdefault(t, hh.state_dict()))
    [resumed] = run_lifelong(s, cfg, [0, 1], resume=saved[0])
    assert torch.equal(resumed.acc, full.acc) and torch.equal(resumed.acc_ci, full.acc_ci)
    with pytest.raises(ValueError):
        run_lifelong(s, cfg, [0, 2], resume=saved[0])


def test_pretrained_autoencoder_init_is_used():
    s = synth()
    torch.manual_seed(5)
    init = CategoricalVAE(8, 2, (1, 28, 28)).state_dict()
    h = LifelongHarness(s, LifelongConfig("recollection", budget=1, code=(8, 2), **KW), [0, 1], ae_init=init)
    w = h.blocks[0].vae.enc[0].weight
    assert torch.equal(w[0], init["enc.0.weight"][0]) and torch.equal(w[1], init["enc.0.weight"][0])


def test_seeds_change_the_initialisation():
    s = synth()
    h = LifelongHarness(s, LifelongConfig("online", **KW), [0, 1])
    w = h.model.conv1.weight
    assert not torch.equal(w[0], w[1])
    h2 = LifelongHarness(s, LifelongConfig("online", **KW), [1])
    assert torch.equal(h2.model.conv1.weight[0], w[1])


def test_result_curves_long_form():
    from recollect.train.lifelong import LifelongResult
    import dataclasses
    fields = {f.name for f in dataclasses.fields(LifelongResult)}
    acc = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    kw = {k: None for k in fields if k not in ("seeds", "acc", "acc_ci")}
    res = LifelongResult(**{**kw, "seeds": [7, 9], "acc": acc, "acc_ci": acc + 100})
    df = res.curves(row="r", budget=10)
    assert list(df.columns[:2]) == ["row", "budget"] and len(df) == 12
    hit = df[(df.seed == 9) & (df["after"] == 2) & (df.task == 1)]
    assert float(hit.task_aware.iloc[0]) == float(acc[1, 2, 1]) and float(hit.class_incremental.iloc[0]) == float(acc[1, 2, 1]) + 100
