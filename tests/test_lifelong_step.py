"""The lifelong step (issue 13): one class per method, a per-example step with no host synchronisation
and no Python state changed (so a CUDA graph can replay it), fusion exact in float64, resume after a
kill, batches of incoming examples, bf16 autocast, and the storage iCaRL really holds (issue 15)."""
import math

import pytest
import torch

from lifelong_helpers import python_state, synth
from recollect.train import methods
from recollect.train.capture import SyncCounter
from recollect.train.icarl import ICaRL
from recollect.train.lifelong import (AS_PUBLISHED, METHODS, LifelongConfig, LifelongHarness, can_fuse, n_updates,
                                      plan_storage, run_lifelong)
from recollect.train.probe import Recorder

torch.set_num_threads(1)
KW = dict(model_kwargs={"nf": 2}, replay=3)

FUSED = [LifelongConfig("online", **KW), LifelongConfig("rehearsal", budget=4, **KW),
         LifelongConfig("recollection", budget=1, code=(8, 2), **KW),
         LifelongConfig("recollection", budget=1, code=(5, 3), ae_replay="code", steps=1, **KW)]
CASES = {
    "fused online+rehearsal+recollection": FUSED,
    "gem": [LifelongConfig("gem", budget=3, **KW)],
    "gem as its authors ran it (SGD, batch 3)": [LifelongConfig("gem", budget=6, **dict(AS_PUBLISHED["gem"], batch=3),
                                                                **KW)],
    "icarl": [LifelongConfig("icarl", budget=9, **KW)],
    "icarl as GEM's code": [LifelongConfig("icarl", budget=9, **dict(AS_PUBLISHED["icarl"], batch=2), **KW)],
    "rehearsal, 3 steps, batch 2": [LifelongConfig("rehearsal", budget=4, steps=3, batch=2, **KW)],
}


def warmed(cfgs, upto=2, seeds=(0, 1), **kw):
    """A harness that learned tasks 0 .. upto-1 (buffers filled, GEM's memories, iCaRL's exemplars),
    with task ``upto`` begun: ``(harness, step, positions of incoming batch i)``."""
    h = LifelongHarness(synth(), cfgs, list(seeds), **kw)
    for t in range(upto):
        h.learn_task(t)
    step = h.begin_task(upto)
    lo, B = h.offsets[upto], h.cfg.batch
    return h, step, lambda i: h.positions[lo + i * B:lo + (i + 1) * B]


def test_every_method_is_a_registered_class():
    assert METHODS == ("online", "rehearsal", "recollection", "gem", "icarl")
    for name in METHODS:
        cls = methods.get_method(name)
        assert issubclass(cls, methods.LifelongMethod) and cls.name == name
    assert [methods.get_method(m).fusable for m in METHODS] == [True, True, True, False, False]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        methods.get_method("nope")


@pytest.mark.parametrize("name", list(CASES))
def test_step_has_no_host_sync_and_changes_no_python_state(name):
    """What a captured CUDA graph needs (issue 13, item 4): the step of one incoming batch (every
    gradient step and the store) performs no operation that blocks the host, builds no tensor from
    Python data, and changes no Python value (a value read inside would be frozen into the graph).
    GEM's QP runs a fixed number of iterations on the device: zero syncs, not a bounded number."""
    h, step, pos = warmed(CASES[name])
    step(pos(0))  # optimizer state exists after the first step, as after a graph's warm-up
    roots = (h.blocks, h.opt, h.learner, h.setting, {k: v for k, v in vars(h).items() if k not in ("_step",)})
    before = python_state(*roots)
    with SyncCounter() as c:
        step(pos(1))
    c.assert_no_syncs(name)
    assert c.host_tensors == 0, "the step builds tensors from Python data (a host-to-device copy each replay)"
    assert python_state(*roots) == before
    assert c.launches > 0


def test_step_registers_every_generator_it_draws_from():
    h, step, _ = warmed(FUSED)
    assert step._generators == [b.gen for b in h.blocks]
    assert all(g.device == h.device for g in step._generators)


def test_empty_buffers_are_filled_with_copies_of_the_incoming_example():
    """The batch always holds 1 + replay items; while a buffer is empty the replay places hold copies of
    the example, chosen by torch.where on the device: exactly the earlier batch (the example repeated)."""
    h = LifelongHarness(synth(), FUSED, [0, 1])
    h.begin_task(0)
    x, y = h.train[0]
    xs = x[:1].unsqueeze(0).expand(2, 1, *x.shape[1:])
    xf = xs.float() / 255
    ys, ts = y[:1].expand(2, 1), torch.zeros(2, 1, dtype=torch.long)
    k = KW["replay"]
    for b in h.blocks:
        part = b.replay_batch(xf, ys, ts)
        assert torch.equal(part.x, xf.expand(2, 1 + k, *xf.shape[2:]))
        assert torch.equal(part.y, ys.expand(2, 1 + k)) and torch.equal(part.task, ts.expand(2, 1 + k))
    h.observe(x[:1], y[:1], 0)
    for b in h.blocks[1:]:  # now the buffers hold the example: the replay places are stored items
        part = b.replay_batch(xf, ys, ts)
        assert bool(b.buffer.count == 1) and torch.equal(part.y[:, 1:], ys.expand(2, k))


def test_fused_groups_equal_separate_models_in_float64():
    s = synth()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        fused = LifelongHarness(s, FUSED, [0, 1])
        fused.run()
        assert fused.dtype == torch.float64
        for j, c in enumerate(FUSED):
            alone = LifelongHarness(s, c, [0, 1])
            alone.run()
            for p, q in zip(fused.model.parameters(), alone.model.parameters()):
                assert torch.allclose(p[2 * j:2 * j + 2], q, rtol=0, atol=1e-12)
            assert torch.equal(fused.acc[2 * j:2 * j + 2], alone.acc)
            if c.method == "recollection":
                for p, q in zip(fused.blocks[j].vae.parameters(), alone.blocks[0].vae.parameters()):
                    assert torch.allclose(p, q, rtol=0, atol=1e-12)
                assert torch.equal(fused.blocks[j].buffer.store, alone.blocks[0].buffer.store)
    finally:
        torch.set_default_dtype(old)


class Killed(Exception):
    pass


@pytest.mark.parametrize("name", list(CASES))
def test_resume_after_a_kill_equals_an_unbroken_run(name):
    """state_dict mid-stream (at a task end), the process killed, a new harness loads it and continues:
    accuracies, weights and every block's state equal those of an unbroken run, bit for bit."""
    s, cfgs = synth(), CASES[name]
    full = LifelongHarness(s, cfgs, [0, 1])
    full.run()
    saved = {}

    def kill_after_task_1(t, h):
        if t == 1:
            saved["state"] = h.state_dict()
            raise Killed

    first = LifelongHarness(s, cfgs, [0, 1])
    with pytest.raises(Killed):
        first.run(on_task_end=kill_after_task_1)
    state = saved["state"]
    assert all(v.device.type == "cpu" for v in state["model"].values())
    live = dict(first.model.named_parameters())
    assert all(v.data_ptr() != live[k].data_ptr() for k, v in state["model"].items() if k in live)
    second = LifelongHarness(s, cfgs, [0, 1])
    second.load_state_dict(state)
    second.run()
    assert torch.equal(second.acc, full.acc) and torch.equal(second.acc_ci, full.acc_ci)
    for p, q in zip(second.model.parameters(), full.model.parameters()):
        assert torch.equal(p, q)
    assert second.n_steps == full.n_steps
    for a, b in zip(second.blocks, full.blocks):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:
            if k == "gen":
                assert torch.equal(sa[k], sb[k])
    with pytest.raises(ValueError, match="other configurations or other seeds"):
        LifelongHarness(s, cfgs, [0, 2]).load_state_dict(state)


def test_batches_of_incoming_examples_and_the_probe_ticks():
    """``batch``: incoming examples per update (GEM's protocol: 10), never across a task boundary; one
    tick per update (``lifelong``, ``lifelong-2nd``, ``lifelong-later`` in the first, second and later
    tasks: the loops of ``lifelong_common.lifelong_loops``), one ``eval`` tick per test batch, one
    ``herding`` tick per iCaRL task."""
    s = synth(per=8)
    cfg = LifelongConfig("icarl", budget=9, batch=3, eval_batch=4, **KW)
    with Recorder() as rec:
        [r] = run_lifelong(s, cfg, [0])
    assert r.complete and r.steps == 3 * 3  # ceil(8 / 3) updates per task, 3 tasks, 1 step each
    assert [rec.loops[n].steps for n in ("lifelong", "lifelong-2nd", "lifelong-later")] == [3, 3, 3]
    assert 3 * 3 == n_updates(s, 3) and rec.loops["herding"].steps == 3
    from recollect.experiments import lifelong_common as L

    loops = L.lifelong_loops({"icarl"}, True, [8, 8, 8], 18, 3, 4, 3)
    assert {l.name: l.steps for l in loops} == {k: v.steps for k, v in rec.loops.items()}
    assert n_updates([2500] * 20, 10) == 5000 and n_updates(s) == 24
    assert rec.loops["eval"].steps == 4 * math.ceil(18 / 4)  # before the first task and after each
    h = LifelongHarness(s, LifelongConfig("rehearsal", budget=4, batch=3, **KW), [0])
    h.run()
    assert h.blocks[0].buffer.seen == 24


def test_bf16_autocast_runs_and_does_not_fuse_with_float32():
    cfg = LifelongConfig("recollection", budget=1, code=(8, 2), amp_dtype="bfloat16", **KW)
    [r] = run_lifelong(synth(), cfg, [0])
    assert r.complete and torch.isfinite(r.acc).all()
    assert not can_fuse(cfg, LifelongConfig("recollection", budget=1, code=(8, 2), **KW))
    with pytest.raises(ValueError, match="amp_dtype"):
        LifelongConfig("online", amp_dtype="float16")


def test_later_fields_keep_earlier_config_dicts():
    """Fields added with issues 13/15 appear in to_dict only when set: earlier cache keys and block seeds
    are unchanged."""
    d = LifelongConfig("gem", budget=3).to_dict()
    assert not {"batch", "amp_dtype", "icarl_distill", "icarl_features"} & set(d)
    assert LifelongConfig("gem", budget=3, batch=10).to_dict()["batch"] == 10
    assert LifelongConfig(**LifelongConfig("icarl", budget=9, icarl_distill="per_class").to_dict()).icarl_distill \
        == "per_class"
    for bad in (dict(batch=0), dict(method="icarl", budget=9, icarl_distill="x"), dict(method="icarl", budget=9,
                                                                                       icarl_features="x")):
        with pytest.raises(ValueError):
            LifelongConfig(**bad)


def test_icarl_storage_counts_the_task_it_holds():
    """Issue 15, item 2: iCaRL keeps 200 exemplars between tasks but the whole current task (2,500
    CIFAR images) until the task ends; the plan shows both."""
    cfg = LifelongConfig("icarl", budget=200, batch=10)
    p = plan_storage(cfg, (3, 32, 32), 20, 100, task_images=2500)
    assert p.capacity == 200 and p.transient_items == 2500
    assert p.peak_bits == (200 + 2500) * 24576 and "2,500 incoming images" in p.describe()
    g = plan_storage(LifelongConfig("gem", budget=200, batch=10), (3, 32, 32), 20, 100, task_images=2500)
    assert g.transient_items == 9 and g.peak_bits == g.used_bits + 9 * 24576
    assert plan_storage(LifelongConfig("rehearsal", budget=10), (3, 32, 32), 20).transient_items == 0
    h = LifelongHarness(synth(), LifelongConfig("icarl", budget=9, **KW), [0])
    assert h.plans[0].transient_items == 8  # the stream's largest task


def test_icarl_per_class_sampling_draws_one_exemplar_of_every_old_class():
    h, step, pos = warmed(CASES["icarl as GEM's code"])
    b = h.blocks[0]
    assert isinstance(b, ICaRL) and b.distill and len(b.old_rows) == 6
    x, tg, task = b.store.sample_per_class(b.old_rows, b.m, b.gen)
    assert x.shape[:2] == (2, 6) and task.tolist() == [[0, 0, 0, 1, 1, 1]] * 2
    st = b.store
    for g in range(2):
        for i, r in enumerate(b.old_rows.tolist()):
            n = min(int(st.filled[r]), b.m)
            hits = [j for j in range(n) if torch.equal(st.x[g, r, j], x[g, i])]
            assert hits and torch.equal(tg[g, i], st.targets[g, r, hits[0]])
    assert torch.allclose(b.old_weight, torch.full((6,), 1 / 3))
