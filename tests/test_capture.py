"""The capture toolkit (recollect.train.capture): the sync counter, the captured step's eager path, and
the sync-free optimizer steps of recollect.grouped. The CUDA tests run only where a GPU is present."""
import pytest
import torch

from recollect.grouped import GroupedAdam, GroupedSGD, grouped_cross_entropy, select_group, stack_groups
from recollect.models import LeNet, MLP
from recollect.train.capture import CapturedStep, SyncCounter, TrainStep, backward_step

torch.set_num_threads(1)
CUDA = torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------ SyncCounter
@pytest.mark.parametrize("what,fn,op", [
    ("item", lambda x, m: x.sum().item(), "aten::_local_scalar_dense"),
    ("bool", lambda x, m: bool(x[0] > 0), "aten::_local_scalar_dense"),
    ("int", lambda x, m: int(m.sum()), "aten::_local_scalar_dense"),
    ("nonzero", lambda x, m: m.nonzero(), "aten::nonzero"),
    ("where", lambda x, m: torch.where(m), "aten::nonzero"),
    ("mask index", lambda x, m: x[m], "aten::index (boolean mask)"),
    ("mask assign", lambda x, m: x.__setitem__(m, 0.0), "aten::index_put_ (boolean mask)"),
    ("masked_select", lambda x, m: x.masked_select(m), "aten::masked_select"),
    ("unique", lambda x, m: m.long().unique(), "aten::_unique2"),
    ("repeat_interleave", lambda x, m: torch.repeat_interleave(m.long()), "aten::repeat_interleave (no output_size)"),
    ("equal", lambda x, m: torch.equal(x, x), "aten::equal"),
])
def test_sync_counter_catches_host_syncs(what, fn, op):
    x = torch.randn(6)
    m = x > 0
    with SyncCounter() as c:
        fn(x, m)
    assert c.syncs.get(op, 0) >= 1, (what, c.syncs)
    with pytest.raises(AssertionError, match="synchronises"):
        c.assert_no_syncs()


def test_sync_counter_counts_launches_not_views_and_sees_host_tensors():
    x = torch.randn(4, 3)
    idx = torch.tensor([0, 2])
    rep = idx + 1
    with SyncCounter() as c:
        y = x.t().reshape(-1).view(3, 4)  # views: no launch
        z = (y + 1).mul_(2)  # two kernels
        x[idx]  # integer indexing: a gather, no sync
        torch.repeat_interleave(idx, rep, output_size=4)  # with output_size: no sync
        torch.tensor([1.0, 2.0])  # built from Python data
    assert c.launches >= 4 and c.ops["aten::add"] == 1 and c.ops["aten::mul_"] == 1
    assert "aten::view" not in c.ops and c.host_tensors >= 1
    c.assert_no_syncs()
    assert z.shape == (3, 4)


@pytest.mark.parametrize("make", [lambda ps: GroupedAdam(ps, lr=torch.tensor([1e-3, 3e-4])),
                                  lambda ps: GroupedSGD(ps, lr=torch.tensor([0.1, 0.01])),
                                  lambda ps: GroupedSGD(ps, lr=0.1, momentum=0.9)])
def test_optimizer_steps_are_sync_free_and_multi_tensor(make):
    """After the first (state-creating) step an optimizer step performs no host sync, builds no tensor
    from Python data and launches a fixed handful of multi-tensor kernels, whatever the number of
    parameters (12 here); an assigned learning rate is picked up without a sync."""
    torch.manual_seed(0)
    model = LeNet(10, (1, 28, 28), groups=2)
    opt = make(model.parameters())
    x, y = torch.rand(2, 3, 1, 28, 28), torch.randint(0, 10, (2, 3))
    for i in range(3):
        opt.zero_grad(set_to_none=True)
        grouped_cross_entropy(model(x), y).sum().backward()
        if i == 2:
            opt.param_groups[0]["lr"] = 0.05
            with SyncCounter() as c:
                opt.step()
            c.assert_no_syncs("an optimizer step with a new learning rate")
        else:
            with SyncCounter() as c:
                opt.step()
            if i == 1:
                c.assert_no_syncs("an optimizer step")
                assert c.host_tensors == 0
                if isinstance(opt, GroupedAdam):  # the CPU path: step counts + one fused kernel per run of rates
                    n_expected = 1 + len(opt._buckets[0][0].runs)
                else:
                    n_expected = 3 if opt.param_groups[0]["momentum"] else 1
                assert c.launches == n_expected, c.ops


def test_adam_cuda_arithmetic_is_four_launches_whatever_the_rates():
    """The path CUDA takes (run here on the CPU): four multi-tensor operations per step for any number
    of parameters and distinct rates, no sync."""
    torch.manual_seed(0)
    model = LeNet(10, (1, 28, 28), groups=4)
    opt = GroupedAdam(model.parameters(), lr=torch.tensor([1e-3, 3e-4, 1e-4, 3e-3]))
    opt.cpu_direct = False
    x, y = torch.rand(4, 3, 1, 28, 28), torch.randint(0, 10, (4, 3))
    for i in range(2):
        opt.zero_grad(set_to_none=True)
        grouped_cross_entropy(model(x), y).sum().backward()
        with SyncCounter() as c:
            opt.step()
    c.assert_no_syncs()
    assert c.launches == 4 and c.host_tensors == 0, c.ops


# ------------------------------------------------------------------------------------------------ CapturedStep
def _loss(model, x, y):
    return grouped_cross_entropy(model(x), y)


def test_captured_step_eager_path_is_the_hand_written_loop_bit_for_bit():
    torch.manual_seed(0)
    a = LeNet(10, (1, 28, 28), groups=2)
    b = stack_groups([select_group(a, 0), select_group(a, 1)])
    oa = GroupedAdam(a.parameters(), lr=torch.tensor([1e-3, 1e-2]))
    ob = GroupedAdam(b.parameters(), lr=torch.tensor([1e-3, 1e-2]))
    X, Y = torch.rand(20, 1, 28, 28), torch.randint(0, 10, (20,))

    def step(idx):
        loss = _loss(a, X[idx], Y[idx])
        backward_step(loss, oa)
        return loss.detach(), idx.sum(-1)

    cs = CapturedStep(step, cuda_graph=True, optimizers=[oa])
    gen = torch.Generator().manual_seed(1)
    for i in range(4):
        idx = torch.randint(0, 20, (2, 5), generator=gen)
        if i == 3:  # a partial batch
            idx = idx[:, :3]
            la, _ = cs.eager(idx)
        else:
            la, s = cs(idx)
            assert torch.equal(s, idx.sum(-1))
        lb = _loss(b, X[idx], Y[idx])
        ob.zero_grad()
        lb.sum().backward()
        ob.step()
        assert torch.equal(la, lb.detach())
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert not cs.captured and not cs.graphed()


def test_captured_step_checks_its_inputs():
    cs = CapturedStep(lambda t: t * 2, cuda_graph=True)
    cs(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="eager"):
        cs(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="tensors only"):
        cs(3)
    assert cs.eager(torch.ones(1)).item() == 2  # any shape
    with pytest.raises(ValueError, match="tensor"):
        CapturedStep(lambda t: "x", cuda_graph=False)(torch.zeros(1))
    free = CapturedStep(lambda t: t + 1, cuda_graph=False)
    free(torch.zeros(2))
    free(torch.zeros(5))  # no shape contract without graphs
    with pytest.raises(ValueError, match="warmup"):
        CapturedStep(lambda t: t, warmup=-1)


def test_captured_step_autocast_covers_the_forward_only():
    seen = {}

    def fn(x):
        seen["forward"] = torch.is_autocast_enabled("cpu")
        with torch.autocast("cpu", enabled=False):
            seen["inside_backward_step"] = torch.is_autocast_enabled("cpu")
        return x

    CapturedStep(fn, amp_dtype=torch.bfloat16)(torch.zeros(1))
    assert seen == {"forward": True, "inside_backward_step": False}
    torch.manual_seed(0)
    m = MLP(10, (1, 28, 28), groups=2, hidden=16)
    step = TrainStep(m, GroupedAdam(m.parameters(), lr=1e-3), _loss, cuda_graph=True, amp_dtype=torch.bfloat16)
    loss = step(torch.rand(2, 4, 1, 28, 28), torch.randint(0, 10, (2, 4)))
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    assert all(p.dtype == torch.float32 for p in m.parameters())


def test_fast_module_reexports_trainstep():
    from recollect.train import fast
    assert fast.TrainStep is TrainStep


# ------------------------------------------------------------------------------------------------ CUDA only
@pytest.mark.skipif(not CUDA, reason="needs a GPU")
def test_cuda_captured_step_equals_eager_and_follows_learning_rate_changes():
    """Replayed graph == eager steps (Adam with a rate per group, a partial batch in between, a
    schedule assigned to group["lr"], set_lr, a state_dict resume after capture)."""
    torch.manual_seed(0)
    dev = torch.device("cuda")
    a = LeNet(10, (1, 28, 28), groups=2).to(dev)
    b = stack_groups([select_group(a, 0), select_group(a, 1)]).to(dev)
    oa = GroupedAdam(a.parameters(), lr=torch.tensor([1e-3, 1e-2], device=dev))
    ob = GroupedAdam(b.parameters(), lr=torch.tensor([1e-3, 1e-2], device=dev))
    X, Y = torch.rand(64, 1, 28, 28, device=dev), torch.randint(0, 10, (64,), device=dev)

    def step(idx):
        loss = _loss(a, X[idx], Y[idx])
        backward_step(loss, oa)
        return loss.detach()

    cs = CapturedStep(step, warmup=2, optimizers=[oa])
    gen = torch.Generator().manual_seed(1)
    for i in range(10):
        idx = torch.randint(0, 64, (2, 8), generator=gen).to(dev)
        if i == 5:
            for o in (oa, ob):
                o.param_groups[0]["lr"] = torch.tensor([3e-3, 1e-4], device=dev)
        if i == 7:
            for o in (oa, ob):
                o.set_lr(5e-4)
        if i == 8:
            oa.load_state_dict(oa.state_dict())  # in place: the graph stays valid
        la = cs.eager(idx[:, :5]) if i == 4 else cs(idx)
        j = idx[:, :5] if i == 4 else idx
        lb = _loss(b, X[j], Y[j])
        backward_step(lb, ob)
        torch.testing.assert_close(la, lb.detach(), rtol=1e-5, atol=1e-6)
    assert cs.captured
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
def test_cuda_sync_debug_mode_finds_no_sync_in_a_replayed_step():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    m = MLP(10, (1, 28, 28), groups=3, hidden=16).to(dev)
    step = TrainStep(m, GroupedSGD(m.parameters(), lr=torch.tensor([0.1, 0.05, 0.01], device=dev)), _loss,
                     cuda_graph=True, warmup=1)
    x, y = torch.rand(3, 4, 1, 28, 28, device=dev), torch.randint(0, 10, (3, 4), device=dev)
    step(x, y)
    step(x, y)  # captured
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert step.step.captured


# ------------------------------------------------------------------------------------------------ the loops
class _CountingStep(CapturedStep):
    """A CapturedStep that runs every call (captured or eager) under a SyncCounter."""
    counters: list = []

    def __call__(self, *inputs):
        with SyncCounter() as c:
            out = super().__call__(*inputs)
        _CountingStep.counters.append(("step", c))
        return out

    def eager(self, *inputs):
        with SyncCounter() as c:
            out = super().eager(*inputs)
        _CountingStep.counters.append(("eager", c))
        return out


@pytest.fixture
def counting(monkeypatch):
    import recollect.train.common as common
    import recollect.train.distill as distill
    _CountingStep.counters = []
    monkeypatch.setattr(common, "CapturedStep", _CountingStep)
    monkeypatch.setattr(distill, "CapturedStep", _CountingStep)
    return _CountingStep.counters


def test_epoch_batches_have_no_host_sync(counting):
    """One batch of the epoch loop (autoencoder with Gumbel noise; task-masked classifier) performs no
    host sync, the first, state-creating one included; the last partial batch runs eagerly."""
    from recollect.models import CategoricalVAE
    from recollect.train.autoencoder import train_autoencoder
    from recollect.train.classifier import train_classifier
    torch.manual_seed(0)
    x = torch.randint(0, 256, (22, 1, 28, 28), dtype=torch.uint8)
    vae = CategoricalVAE(6, 3, (1, 28, 28), groups=2)
    train_autoencoder(vae, x, 1, 8, torch.tensor([1e-3, 3e-4]), torch.Generator().manual_seed(0))
    kinds = [k for k, _ in counting]
    assert kinds == ["step", "step", "eager"]  # 22 = 8 + 8 + 6
    for _, c in counting:
        c.assert_no_syncs("an autoencoder batch")
    counting.clear()
    mask = torch.tensor([[True] * 5 + [False] * 5, [False] * 5 + [True] * 5])
    y = torch.randint(0, 10, (22,))
    task = (y >= 5).long()
    train_classifier(LeNet(10, (1, 28, 28), groups=2), x, y, 1, 8, 1e-3, torch.Generator().manual_seed(0),
                     task=task, class_mask=mask)
    assert len(counting) == 3
    for _, c in counting:
        c.assert_no_syncs("a task-masked classifier batch")


def test_run_epochs_is_the_plain_loop_bit_for_bit():
    """CapturedStep changes nothing on the CPU: train_classifier equals the hand-written epoch loop."""
    from recollect.train.classifier import train_classifier
    from recollect.train.common import group_batches
    torch.manual_seed(0)
    a = MLP(10, (1, 28, 28), groups=2, hidden=16)
    b = stack_groups([select_group(a, 0), select_group(a, 1)])
    x = torch.randint(0, 256, (21, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (21,))
    losses = train_classifier(a, x, y, 2, 8, torch.tensor([1e-3, 1e-2]), torch.Generator().manual_seed(3))
    opt = GroupedAdam(b.parameters(), lr=torch.tensor([1e-3, 1e-2]))
    gen = torch.Generator().manual_seed(3)
    for epoch in range(2):
        total = torch.zeros(2)
        for idx in group_batches(21, 2, 8, gen):
            loss = grouped_cross_entropy(b(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            total += loss.detach() * idx.shape[1]
        assert torch.equal(losses[epoch], total / 21)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("masked", [False, True])
def test_student_steps_have_no_host_sync(counting, masked):
    """One student step, random (k=1) and active (k=10: forward on the candidates, argmax, gather)
    groups fused, task-masked or not, performs no host sync."""
    from recollect.train.distill import Pool, one_hot_targets, train_students
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 4, (30,), generator=gen)
    task = (y >= 2).long() if masked else None
    mask = torch.tensor([[True, True, False, False], [False, False, True, True]]) if masked else None
    pool = Pool(x, one_hot_targets(y, 4), task)
    ev = (x[:10], y[:10]) + ((task[:10],) if masked else ())
    train_students(lambda g: MLP(4, (1, 28, 28), groups=g, hidden=8), [pool, pool, pool], seeds=[0, 1, 2],
                   lrs=[1e-3, 1e-3, 1e-2], active_k=[1, 10, 10], class_mask=mask, checkpoints=[3, 6],
                   eval_sets={"test": ev})
    assert [k for k, _ in counting] == ["step"] * 6
    for _, c in counting:
        c.assert_no_syncs("a student step")
        assert c.host_tensors == 0


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
def test_cuda_loops_graphed_equal_eager():
    """run_epochs (autoencoder with Gumbel noise from the default CUDA generator, a learning rate
    assigned between epochs) and train_students (random and active k=10) give the same results
    with and without CUDA graphs."""
    from recollect.models import CategoricalVAE
    from recollect.train.autoencoder import train_autoencoder
    from recollect.train.distill import labelled_pool, train_students
    dev = torch.device("cuda")
    x = torch.randint(0, 256, (70, 1, 28, 28), dtype=torch.uint8)
    out = {}
    for graph in (False, True):
        torch.manual_seed(0)
        vae = CategoricalVAE(6, 3, (1, 28, 28), groups=2).to(dev)
        opt = GroupedAdam(vae.parameters(), lr=torch.tensor([1e-3, 3e-4], device=dev))

        def schedule(epoch, model, o, losses):
            o.param_groups[0]["lr"] = torch.tensor([5e-4, 1e-4], device=dev)

        torch.cuda.manual_seed(1)
        losses = train_autoencoder(vae, x, 3, 8, None, torch.Generator().manual_seed(0), optimizer=opt,
                                   on_epoch_end=schedule, cuda_graph=graph)
        out[graph] = (torch.stack(losses), [p.detach().clone() for p in vae.parameters()])
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-4, atol=1e-5)
    for p, q in zip(out[True][1], out[False][1]):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    y = torch.randint(0, 4, (70,))
    pool = labelled_pool(x, y, 4)
    runs = [train_students(lambda g: MLP(4, (1, 28, 28), groups=g, hidden=8), [pool] * 3, seeds=[0, 1, 2],
                           lrs=[1e-3, 1e-3, 1e-2], active_k=[1, 10, 10], checkpoints=[20, 40],
                           eval_sets={"t": (x, y)}, device=dev, record=True, return_model=True, cuda_graph=graph)
            for graph in (False, True)]
    assert torch.equal(runs[0].chosen[:, 0], runs[1].chosen[:, 0])  # random draws: identical
    assert (runs[0].chosen == runs[1].chosen).float().mean() > 0.9  # active: ties aside, identical
    torch.testing.assert_close(runs[0].accuracy, runs[1].accuracy, rtol=0, atol=10.0)


def test_eager_steps_turns_every_graph_off_while_it_lasts():
    """The preflight's eager comparison: inside ``eager_steps`` no step is graphed, on any device,
    and the switch is restored after it (also after an error)."""
    from recollect.train.capture import eager_steps

    step = CapturedStep(lambda x: x * 2, device="cuda")
    assert step.graphed()
    with eager_steps():
        assert not step.graphed() and not CapturedStep(lambda x: x, device="cuda").graphed()
    assert step.graphed()
    with pytest.raises(RuntimeError):
        with eager_steps():
            raise RuntimeError("boom")
    assert step.graphed()
