"""GEM as its authors ran it (issue 15): plain SGD steps that keep <g_step, g_k> >= 0 for every stored task,
and the fixed-iteration, sync-free QP solver behind it (issue 13)."""
import copy

import pytest
import torch

from lifelong_helpers import synth
from recollect.grouped import GroupedSGD, grouped_cross_entropy
from recollect.train.capture import SyncCounter
from recollect.train.common import masked_logits
from recollect.train.gem import flat_grad, project_gradient, solve_box_qp
from recollect.train.lifelong import LifelongConfig, LifelongHarness

torch.set_num_threads(1)


def _hard_problem(t, rho, seed, D=400):
    """Memory gradients with a shared direction (rho), log-normal norms, and a proposed gradient
    against their mean: many active constraints, an ill-conditioned Gram matrix."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, generator=g, dtype=torch.float64)
    M = (rho * base + torch.randn(t, D, generator=g, dtype=torch.float64)) \
        * torch.exp(torch.randn(t, 1, generator=g, dtype=torch.float64))
    mean = M.mean(0)
    grad = -6 * mean / mean.norm() + 0.3 * torch.randn(D, generator=g, dtype=torch.float64)
    return M, grad


@pytest.mark.parametrize("t", [5, 19, 49])
@pytest.mark.parametrize("rho", [0.0, 0.9])
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_fixed_iterations_reach_the_optimum(t, rho, margin):
    """The step's QP: 100 iterations (the default ``qp_iters``), no convergence test, against the same
    solver run to a tight tolerance: the dual objective within 1e-6 (relative) of the optimum, and the
    projected gradient satisfies every constraint to ~1e-6 (cosine)."""
    worst = 0.0
    for seed in range(3):
        M, g = _hard_problem(t, rho, seed)
        P, q = M @ M.T, M @ g
        v = solve_box_qp(P, q, lower=margin)
        ref = solve_box_qp(P, q, lower=margin, iters=50000, tol=1e-13)
        assert (v >= margin - 1e-12).all()
        f = lambda w: float(0.5 * w @ P @ w + q @ w)  # noqa: E731
        assert f(v) - f(ref) <= 1e-6 * abs(f(ref))
        assert float((v - ref).abs().max()) <= 1e-2 * float(ref.abs().max())
        gt = g + M.T @ v
        worst = min(worst, float(((M @ gt) / (M.norm(dim=1) * gt.norm())).min()))
    assert worst >= -1e-6


def test_projection_is_sync_free_and_batched():
    Ms, gs = zip(*[_hard_problem(19, 0.5, s) for s in range(3)])
    M, g = torch.stack(Ms).float(), torch.stack(gs).float()
    g[1] = M[1].sum(0)  # a group with no violation keeps its gradient
    project_gradient(g, M)
    with SyncCounter() as c:
        out, violated = project_gradient(g, M, margin=0.5)
    c.assert_no_syncs("GEM's projection")
    assert c.host_tensors == 0
    assert violated.tolist() == [True, False, True] and torch.equal(out[1], g[1])
    tol = 1e-4 * M.norm(dim=-1, keepdim=True) * out.norm(dim=-1).view(3, 1, 1)
    assert (torch.bmm(M, out.unsqueeze(-1)) >= -tol).all()


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_gem_step_keeps_every_stored_task_loss_from_increasing(margin):
    """GEM's guarantee, on the harness's own step with plain SGD (GEM's optimizer): the update taken,
    ``g_step = (theta_before - theta_after) / lr``, has ``<g_step, g_k> >= 0`` for the memory gradient
    ``g_k`` of every stored task, in every fused group, whenever the proposed gradient violated a
    constraint (and equals the proposed gradient otherwise). Memory gradients are recomputed here
    independently (one plain backward pass per task), in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        s = synth(T=4, per=6, cls=3, seed=3)
        lr = 0.1
        cfg = LifelongConfig("gem", budget=8, optimizer="sgd", lr=lr, gem_margin=margin, model_kwargs={"nf": 2})
        h = LifelongHarness(s, cfg, [0, 1])
        assert isinstance(h.opt, GroupedSGD)
        for t in range(3):
            h.learn_task(t)
        step = h.begin_task(3)
        mem = h.blocks[0].memory
        violations = 0
        for i in range(6):
            idx = h.positions[h.offsets[3] + i:h.offsets[3] + i + 1]
            ref = copy.deepcopy(h.model).train()
            params = list(ref.parameters())
            rows = []
            for p in range(3):  # memory gradient of every stored task, for both groups at once
                ref.zero_grad()
                logits = masked_logits(ref(mem.x[p].unsqueeze(0).expand(2, *mem.x[p].shape).double() / 255),
                                       torch.full((2, mem.per_task), p), h.train_mask)
                grouped_cross_entropy(logits, mem.y[p].expand(2, -1)).sum().backward()
                rows.append(flat_grad(params))
            M = torch.stack(rows, 1)  # (G, 3, D)
            ref.zero_grad()
            x = h.X[idx].unsqueeze(0).expand(2, 1, *h.X.shape[1:]).double() / 255
            logits = masked_logits(ref(x), torch.full((2, 1), 3), h.train_mask)
            grouped_cross_entropy(logits, h.Y[idx].expand(2, 1)).sum().backward()
            g_raw = flat_grad(params)
            before = torch.cat([p.detach().reshape(2, -1) for p in h.model.parameters()], 1)
            step(idx)
            after = torch.cat([p.detach().reshape(2, -1) for p in h.model.parameters()], 1)
            g_step = (before - after) / lr
            raw = torch.bmm(M, g_raw.unsqueeze(-1)).squeeze(-1)
            dots = torch.bmm(M, g_step.unsqueeze(-1)).squeeze(-1)
            scale = M.norm(dim=-1) * g_step.norm(dim=-1, keepdim=True)
            for grp in range(2):
                if (raw[grp] < 0).any():
                    violations += 1
                    assert (dots[grp] >= -1e-7 * scale[grp]).all(), (dots[grp], scale[grp])
                    if margin > 0:  # the margin leans the step towards the memories
                        assert (dots[grp] > 0).all()
                else:
                    assert torch.allclose(g_step[grp], g_raw[grp], rtol=1e-6, atol=1e-9)
        assert violations > 0, "no step violated a constraint: the test would not test the projection"
    finally:
        torch.set_default_dtype(old)
