"""The distillation engine of section 5.1 (recollect.train.distill) and the chapter's accounting and
learning-rate selection (recollect.experiments.distill_mnist). All fast: tiny students and pools."""
import copy

import pandas as pd
import pytest
import torch

from recollect import paper
from recollect.grouped import GroupedAdam, grouped_cross_entropy
from recollect.models import MLP, CategoricalVAE, LeNet
from recollect.train.autoencoder import decode_all
from recollect.train.distill import (Pool, RunAdam, _soft_loss, code_sampling_pool, hardest, labelled_pool,
                                     one_hot_targets, recollection_pool, subset_pool, teacher_targets,
                                     train_students)

torch.set_num_threads(1)
SHAPE = (1, 28, 28)


def tiny_mlp(g):
    return MLP(4, SHAPE, groups=g, hidden=8)


def make_pool(n, seed, k=4, stream=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *SHAPE), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, k, (n,), generator=gen)
    p = labelled_pool(x, y, k)
    p.stream = stream
    return p, x, y


def eval_set(n=20, seed=9, k=4):
    _, x, y = make_pool(n, seed, k)
    return {"test": (x, y)}


# ------------------------------------------------------------------------------------------------ Adam
@pytest.mark.parametrize("fused", [True, False])
def test_run_adam_equals_grouped_adam(fused):
    """One fused kernel per run of equal learning rates computes exactly GroupedAdam's update."""
    torch.manual_seed(0)
    m1 = MLP(4, SHAPE, groups=4, hidden=6).double()
    m2 = copy.deepcopy(m1)
    lrs = [1e-3, 1e-3, 1e-4, 1e-2]
    o1 = GroupedAdam(m1.parameters(), lr=torch.tensor(lrs, dtype=torch.float64))
    o2 = RunAdam(m2.parameters(), lrs, fused=fused)
    assert [r[:2] for r in o2.runs] == [(0, 2), (2, 3), (3, 4)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.rand((4, 3, *SHAPE), generator=gen, dtype=torch.float64)
        y = torch.randint(0, 4, (4, 3), generator=gen)
        for m, o in ((m1, o1), (m2, o2)):
            o.zero_grad()
            grouped_cross_entropy(m(x), y).sum().backward()
            o.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)


def test_run_adam_state_roundtrip():
    m = tiny_mlp(2)
    o = RunAdam(m.parameters(), [1e-3, 1e-4])
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    o.step()
    st = o.state_dict()
    o2 = RunAdam(tiny_mlp(2).parameters(), [1e-3, 1e-4])
    o2.load_state_dict(st)
    assert o2.step_count == 1 and all(torch.equal(a, b) for a, b in zip(o.m, o2.m))
    with pytest.raises(ValueError):
        RunAdam(tiny_mlp(2).parameters(), [1e-3, 1e-3]).load_state_dict(st)


# ------------------------------------------------------------------------------------------------ pools
def test_pool_validation():
    x = torch.zeros(5, *SHAPE, dtype=torch.uint8)
    with pytest.raises(ValueError):
        Pool(x.float(), torch.zeros(5, 3))
    with pytest.raises(ValueError):
        Pool(x, torch.zeros(4, 3))
    with pytest.raises(ValueError):
        Pool(x, torch.zeros(5, 3, dtype=torch.int64))
    with pytest.raises(ValueError):
        one_hot_targets(torch.tensor([0, 3]), 3)
    t = one_hot_targets(torch.tensor([0, 2]), 3)
    assert torch.equal(t, torch.tensor([[1.0, 0, 0], [0, 0, 1]]))


def test_subset_pool_is_a_subset_of_fixed_size_and_seeded():
    p, x, y = make_pool(50, 0)
    a = subset_pool(p, 10, torch.Generator().manual_seed(3))
    b = subset_pool(p, 10, torch.Generator().manual_seed(3))
    c = subset_pool(p, 10, torch.Generator().manual_seed(4))
    assert len(a) == 10 and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    rows = {tuple(r.flatten().tolist()[:20]) for r in x}
    assert all(tuple(r.flatten().tolist()[:20]) in rows for r in a.x)
    with pytest.raises(ValueError):
        subset_pool(p, 51, torch.Generator())


def test_recollections_are_the_deterministic_decoding_labelled_by_the_teacher():
    torch.manual_seed(0)
    vae = CategoricalVAE(6, 2, SHAPE).eval()
    teacher = LeNet(10, SHAPE).eval()
    codes = torch.randint(0, 2, (1, 7, 6))
    pool = recollection_pool(vae, codes, teacher)
    assert torch.equal(pool.x, decode_all(vae, codes)[0])
    assert torch.equal(pool.x, recollection_pool(vae, codes[0], teacher).x)  # decoding is deterministic
    assert torch.allclose(pool.targets, teacher_targets(teacher, pool.x))
    assert torch.allclose(pool.targets.sum(1), torch.ones(7))
    cs = code_sampling_pool(vae, teacher, 25, torch.Generator().manual_seed(0), chunk=10)
    assert cs.stream and len(cs) == 25 and cs.targets.shape == (25, 10)


# ------------------------------------------------------------------------------------------------ engine
def test_fused_students_equal_students_trained_alone():
    """A group's run depends only on its own seed, pool and learning rate, not on its neighbours."""
    pools = [make_pool(30, s)[0] for s in range(3)]
    kw = dict(checkpoints=[5, 20], eval_sets=eval_set(), return_model=True)
    fused = train_students(tiny_mlp, pools, seeds=[0, 1, 2], lrs=[1e-2, 1e-3, 1e-2], active_k=[1, 1, 3], **kw)
    alone = train_students(tiny_mlp, pools[2:], seeds=[2], lrs=1e-2, active_k=3, **kw)
    assert torch.allclose(fused.accuracy[..., 2], alone.accuracy[..., 0])
    for a, b in zip(fused.model.parameters(), alone.model.parameters()):
        assert torch.allclose(a[2], b[0], atol=1e-6)
    assert fused.accuracy.shape == (2, 1, 3) and not torch.isnan(fused.accuracy).any()


def test_random_draws_follow_the_seed_and_cover_the_pool():
    p, _, _ = make_pool(8, 0)
    q, _, _ = make_pool(8, 1)
    r = train_students(tiny_mlp, [p, q, p], seeds=[5, 5, 6], lrs=1e-3, checkpoints=[400], eval_sets=eval_set(),
                       record=True)
    ch = r.chosen[:, :, 0]  # (steps, G)
    assert ch.shape == (400, 3) and int(ch.min()) >= 0 and int(ch.max()) <= 7
    assert torch.equal(ch[:, 0], ch[:, 1])  # same seed, same draws
    assert not torch.equal(ch[:, 0], ch[:, 2])
    counts = torch.bincount(ch[:, 0], minlength=8)
    assert counts.min() > 25  # uniform: 50 expected per example


def test_stream_pool_gives_a_fresh_example_every_episode():
    p, _, _ = make_pool(30, 0, stream=True)
    r = train_students(tiny_mlp, [p], seeds=[0], lrs=1e-3, checkpoints=[45], eval_sets=eval_set(), record=True)
    assert torch.equal(r.chosen[:, 0, 0], torch.arange(45) % 30)


def test_active_sampling_trains_on_the_hardest_candidate():
    """With a frozen student (lr 0) and many candidates from a 3-example pool, every episode must
    train on the example with the highest loss."""
    p, _, _ = make_pool(3, 0)
    r = train_students(tiny_mlp, [p, p], seeds=[0, 0], lrs=0.0, active_k=[1, 64], checkpoints=[30],
                       eval_sets=eval_set(), record=True, return_model=True)
    model = r.model
    with torch.no_grad():
        loss = _soft_loss(model(p.x.unsqueeze(0).expand(2, *p.x.shape)), p.targets.unsqueeze(0).expand(2, 3, 4),
                          reduction="none")[1]
    assert torch.all(r.chosen[:, 1, 0] == loss.argmax())
    assert len(r.chosen[:, 0, 0].unique()) > 1  # the random group is not steered
    # the helper agrees
    x = p.x.view(1, 1, 3, *SHAPE).expand(2, 1, 3, *SHAPE)
    t = p.targets.view(1, 1, 3, 4).expand(2, 1, 3, 4)
    assert int(hardest(model, x, t)[1, 0]) == int(loss.argmax())


def test_resume_from_a_checkpoint_continues_exactly():
    pools = [make_pool(20, s)[0] for s in range(2)]
    kw = dict(seeds=[0, 1], lrs=[1e-2, 1e-3], active_k=[1, 2], checkpoints=[10, 40], eval_sets=eval_set(),
              chunk=10, checkpoint_every=20, return_model=True)
    saved = []
    full = train_students(tiny_mlp, pools, on_checkpoint=saved.append, **kw)
    assert len(saved) == 1 and saved[0]["step"] == 20
    resumed = train_students(tiny_mlp, pools, state=saved[0], **kw)
    assert torch.equal(full.accuracy, resumed.accuracy)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        train_students(tiny_mlp, pools, state=dict(saved[0], groups=3), **kw)


def test_batches_and_checkpoints_are_validated():
    p, _, _ = make_pool(10, 0)
    with pytest.raises(ValueError):
        train_students(tiny_mlp, [p], seeds=[0], lrs=1e-3, checkpoints=[5], batch_size=2, eval_sets=eval_set())
    with pytest.raises(ValueError):
        train_students(tiny_mlp, [p], seeds=[0, 1], lrs=1e-3, checkpoints=[4], eval_sets=eval_set())
    with pytest.raises(ValueError):
        train_students(tiny_mlp, [p], seeds=[0], lrs=1e-3, checkpoints=[4], active_k=0, eval_sets=eval_set())
    r = train_students(tiny_mlp, [p], seeds=[0], lrs=1e-3, checkpoints=[4, 8], batch_size=2, eval_sets=eval_set(),
                       record=True)
    assert r.chosen.shape == (4, 1, 2) and r.episodes_done == 8


def test_task_masked_students():
    """Multi-task students (e.g. Omniglot's alphabets): logits outside the example's task are masked,
    the loss stays finite against teacher targets that are zero outside the task."""
    mask = torch.tensor([[True, True, False, False], [False, False, True, True]])
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, *SHAPE), generator=gen, dtype=torch.uint8)
    task = torch.arange(12) % 2
    y = task * 2 + torch.randint(0, 2, (12,), generator=gen)
    logits = torch.randn(1, 12, 4)
    t = torch.softmax(logits.masked_fill(~mask[task].unsqueeze(0), float("-inf")), -1)
    loss = _soft_loss(logits, t, task.unsqueeze(0), mask)
    assert torch.isfinite(loss).all() and float(loss) < 0.8  # near the entropy of t, not of 4 classes
    pool = Pool(x, one_hot_targets(y, 4), task)
    r = train_students(tiny_mlp, [pool, pool], seeds=[0, 1], lrs=1e-2, active_k=[1, 3], class_mask=mask,
                       checkpoints=[30], eval_sets={"train": (x, y, task)})
    assert torch.isfinite(r.accuracy).all() and float(r.accuracy.min()) >= 25.0
    with pytest.raises(ValueError):
        train_students(tiny_mlp, [labelled_pool(x, y, 4)], seeds=[0], lrs=1e-3, class_mask=mask, checkpoints=[2],
                       eval_sets={"train": (x, y, task)})


# ------------------------------------------------------------------------------------------------ chapter
def test_storage_accounting_matches_section_5_1():
    from recollect.experiments import distill_mnist as ex

    acct = ex.storage_accounting(50_000).set_index("generator")
    for g, (c, _) in paper.MNIST_GENERATORS.items():
        assert round(acct.loc[g, "per_sample_ratio"]) == paper.PER_SAMPLE_RATIOS[c]
        assert abs(acct.loc[g, "total_ratio"] / float(g[:-1]) - 1) < ex.RATIO_BAND
    rows = ex.accounting_rows(acct.reset_index())
    assert (rows.verdict == "agrees").all()
    assert acct.loc["10x", "buffer_bits"] == 50_000 * 168


def test_summarize_picks_the_learning_rate_on_validation_and_reports_test():
    from recollect.experiments import distill_mnist as ex

    rows = []
    for lr, val, test in ((1e-3, [50, 52], [10, 12]), (1e-4, [60, 62], [90, 94])):
        for seed in (0, 1):
            base = dict(arch="mlp", source="Real Data", sampling="random", lr=lr, seed=seed, episodes=10)
            rows.append(dict(base, split="val", accuracy=val[seed]))
            rows.append(dict(base, split="test", accuracy=test[seed]))
    s = ex.summarize(pd.DataFrame(rows))
    assert len(s) == 1 and s.lr.iloc[0] == 1e-4 and s["mean"].iloc[0] == 92 and s.runs.iloc[0] == 2
    assert s.val_mean.iloc[0] == 61


def test_suspect_cells_get_no_verdict():
    from recollect.experiments import distill_mnist as ex

    rows = []
    for col in paper.TABLE_COLUMNS:
        rows.append(dict(arch="mlp", source=col, sampling="active", episodes=100000, lr=1e-3, val_mean=1.0,
                         mean=90.0, sd=1.0, runs=5))
    tab = ex.compare_table(pd.DataFrame(rows), "mlp")
    nv = tab[tab.verdict.str.startswith("no verdict")]
    assert sorted(nv.column) == sorted(["10% Sample", "2% Sample", "1% Sample"])
