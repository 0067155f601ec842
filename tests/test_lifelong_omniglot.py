"""The lifelong Omniglot chapter's library logic (rows and settings of appendix A.4, GEM and iCaRL as
published with GEM's CIFAR-100 values carried over, the single-head variant and the test of which accuracy
the paper reports, the items, their probes and loops, the claims) and what both lifelong chapters share
(``lifelong_common``): one item is one fused run whose payload is data, that survives the trip through a
result file and resumes after a kill exactly as an unbroken run."""
import pathlib
from dataclasses import replace

import pandas as pd
import pytest
import torch

from recollect import claims, data, paper
from recollect import results as R
from recollect.experiments import Context
from recollect.experiments import items as I
from recollect.experiments import lifelong_common as L
from recollect.experiments import lifelong_omniglot as ex
from recollect.train.checkpoint import Checkpointer
from recollect.train.lifelong import AS_PUBLISHED, LifelongConfig, fuse_groups, n_train_classes, n_updates, plan_storage

from lifelong_helpers import synth

ALL = replace(ex.PAPER, rows=tuple(ex.ROWS))


def _items():
    return {k.split("/")[1]: I.get_item(k) for k in ex.item_keys()}


def test_paper_settings_follow_appendix_a4():
    c = ex.PAPER
    assert c.full and c.nf == 20 and c.lr == 1e-3 and c.budgets == (10, 50)
    assert dict(zip(c.budgets, c.codes)) == paper.OMNIGLOT_LIFELONG_GENERATORS
    rs = ex.rows(ALL)
    assert [r["paper"] for r in rs[:7]] == [3.5, 3.6, 5.0, 4.3, 4.8, 9.3, 13.0]
    assert [r["steps"] for r in rs[:7]] == [1, 1, 1, 1, 3, 1, 3]
    assert all(r["paper"] is None and r["beyond"] for r in rs[7:])


def test_storage_plans_at_the_papers_budgets():
    plans = [plan_storage(c, (1, 28, 28), 50, 1623) for c in ex.row_configs(ALL)]
    assert [p.capacity for p in plans[:7]] == [0, 10, 1011, 50, 50, 1005, 1005]
    # GEM with 10 memories for 50 alphabets, iCaRL with fewer exemplars than 1,623 classes: cannot run
    assert [p.runnable for p in plans[7:]] == [False, True, False, False, True]


def test_gem_and_icarl_carry_the_published_cifar_settings_over():
    cfgs = dict(zip(ex.ROWS, ex.row_configs(ALL)))
    for key in ("gem-10", "gem-50", "icarl-10", "icarl-50"):
        method = ex.ROWS[key][0]
        c = cfgs[key]
        assert {k: getattr(c, k) for k in AS_PUBLISHED[method]} == AS_PUBLISHED[method], key
    assert (cfgs["gem-50"].optimizer, cfgs["gem-50"].lr, cfgs["gem-50"].batch) == ("sgd", 0.1, 10)
    # the harness variant and the paper's rows: Adam at 1e-3, one example per step
    h = cfgs["gem-50-adam"]
    assert (h.method, h.budget, h.optimizer, h.lr, h.batch) == ("gem", 50, "adam", 1e-3, 1)
    assert {(c.optimizer, c.lr, c.batch) for k, c in cfgs.items() if k in ex.PAPER_ROWS} == {("adam", 1e-3, 1)}
    assert [r["baseline"] for r in ex.rows(ALL)][7:] == ["published"] * 4 + ["harness"]


def test_storage_table_counts_what_is_held_while_an_alphabet_runs():
    t = ex.storage_table(Context("paper", [0], torch.device("cpu"))).set_index("row")
    gem = t.loc["GEM, budget 50, as published"]
    assert gem["held while a task runs"] == 9 and gem["peak bits"] == 59 * ex.IMAGE_BITS
    assert gem["memory"] == "1 image per task (50) + 9 of the incoming batch"
    assert t.loc["iCaRL, budget 50, as published", "memory"].startswith("cannot run")
    assert t.loc["rehearsal, budget 50, 1 step", "held while a task runs"] == 0
    # iCaRL where it can run: the whole current alphabet (the largest: 990 images) on top of its budget
    p = plan_storage(LifelongConfig("icarl", budget=2000, **AS_PUBLISHED["icarl"]), (1, 28, 28), 50, 1623,
                     task_images=ex.FACTS["max_train_per_task"])
    assert p.transient_items == 990 and p.peak_bits == (2000 + 990) * ex.IMAGE_BITS


def test_items_first_pass_then_seeds_then_beyond():
    its = _items()
    first = [it.cfg("paper") for it in its.values() if it.stage == "first"]
    assert sorted(r for c in first for r in c.rows) == sorted(ex.PAPER_ROWS)
    assert {c.run_seeds for c in first} == {(0,)}
    seeds = [it.cfg("paper") for it in its.values() if it.stage == "seeds"]
    assert sorted(r for c in seeds for r in c.rows) == sorted(ex.PAPER_ROWS)
    assert {c.run_seeds for c in seeds} == {(1, 2, 3, 4)}
    beyond = {n: it for n, it in its.items() if it.stage == "beyond"}
    assert set(beyond) == set(ex.BEYOND_ROWS) | set(ex.SINGLE_HEAD)
    # a row that cannot run at the paper's budgets needs no GPU
    assert {n: it.gpu for n, it in beyond.items()} == {"gem-10": False, "gem-50": True, "icarl-10": False,
                                                      "icarl-50": False, "gem-50-adam": True,
                                                      "single-head-1step-s0": True, "single-head-3step-s0": True}
    # the single-head variant: the paper's rows without task masks, seed 0, the smoke profile at that seed
    for name, keys in ex.SINGLE_HEAD.items():
        c = its[name].cfg("paper")
        assert c.train_mask == "none" and c.run_seeds == (0,) and c.rows == keys
        assert {lc.train_mask for lc in ex.row_configs(c)} == {"none"}
        assert its[name].cfg("smoke").run_seeds == (0,)
    assert sorted(r for keys in ex.SINGLE_HEAD.values() for r in keys) == sorted(ex.PAPER_ROWS)
    for name, it in its.items():
        cfg = it.cfg("paper")
        assert len(fuse_groups(ex.row_configs(cfg))) == 1, name  # one item, one fused run
        if it.versioned_by is not None:
            assert its[it.versioned_by].versioned_by is None and its[it.versioned_by].cfg("paper").rows == cfg.rows
    assert its["single-head-1step-s0"].versioned_by is None  # the smoke profile runs the single-head code path
    assert all(it.reduction for it in its.values() if it.stage == "first")


def test_loops_and_probes():
    its = _items()
    it = its["fused-1step-s0"]
    a, b = ex.FACTS["train_sizes"][:2]
    assert {l.name: l.steps for l in it.loops(it.cfg("paper"))} == {
        "lifelong": a, "lifelong-2nd": b, "lifelong-later": 29214 - a - b, "eval": 51 * 4}
    assert its["gem-10"].loops(its["gem-10"].cfg("paper")) == []
    # GEM as published: one update per batch of 10 incoming examples, batches never crossing an alphabet
    g = its["gem-50"]
    gl = {l.name: l for l in g.loops(g.cfg("paper"))}
    assert sum(gl[n].steps for n in ("lifelong", "lifelong-2nd", "lifelong-later")) == n_updates(ex.FACTS["train_sizes"], 10)
    assert gl["eval"].steps == 204
    assert n_updates(ex.FACTS["train_sizes"], 10) == 2937 and sum(ex.FACTS["train_sizes"]) == 29214
    assert all(l.captured == l.name.startswith("lifelong") for l in gl.values())
    # GEM's step computes a memory gradient per earlier alphabet: its later steps grow from the second
    # alphabet's (about 26 earlier alphabets on average over the last 48: 24 beyond the probe's third),
    # and its probe runs three alphabets; the fused runs' later steps cost what the second's did
    assert gl["lifelong-later"].grows_from == "lifelong-2nd" and 20 < gl["lifelong-later"].growth < 28
    assert g.cfg("probe").tasks == 3 and it.cfg("probe").tasks == 2
    later = {l.name: l for l in it.loops(it.cfg("paper"))}["lifelong-later"]
    assert later.like == "lifelong-2nd" and later.grows_from is None
    p = it.cfg("probe")
    assert (p.tasks, p.nf, p.codes, p.run_seeds, p.rows) == (2, 20, it.cfg("paper").codes, (0,), it.cfg("paper").rows)
    # a run that cannot run at the paper's budgets is its own probe; GEM keeps 1 memory per task
    assert its["icarl-50"].cfg("probe") == its["icarl-50"].cfg("paper")
    gp = g.cfg("probe")
    assert ex.row_configs(gp)[0].budget // gp.tasks == 50 // 50
    # batches of 10: 5 per alphabet in the probe, so the preflight captures and replays the step
    assert gp.train_per_task == ex.PROBE_BATCHED_EXAMPLES == 50
    assert its["gem-50-adam"].cfg("probe").train_per_task == ex.PROBE_EXAMPLES
    # the dry run: the probe's stream and shapes, one test image per character; a storage-only run stays
    # its own (paper) config, it must never become a small runnable stream
    d = it.cfg("dry")
    assert d.test_per_class == 1 and d == replace(p, test_per_class=1)
    assert its["icarl-50"].cfg("dry") == its["icarl-50"].cfg("paper")
    # GEM on batches of 10: one batch per alphabet in the dry run (five in the probe)
    gd = g.cfg("dry")
    assert gd.train_per_task == 10 and gd == replace(gp, test_per_class=1, train_per_task=10)


def test_facts_are_the_datas():
    if not (data.data_dir() / "omniglot.npz").is_file():
        pytest.skip("omniglot.npz not found: set RECOLLECT_DATA to run this test")
    st = ex.stream(ex.PAPER)
    assert ex.FACTS == {"tasks": st.n_tasks, "classes": n_train_classes(st),
                        "train_images": sum(len(s) for s in st.train), "test_images": sum(len(s) for s in st.test),
                        "max_train_per_task": max(len(s) for s in st.train),
                        "train_sizes": tuple(len(s) for s in st.train)}


def _df(values):
    out = []
    for key, acc in values.items():
        for seed, d in ((0, -0.2), (1, 0.2)):
            out.append(dict(key=key, runnable=True, ACC_task=acc + d, ACC_class=acc / 10 + d))
    return pd.DataFrame(out)


def test_claims_directions():
    paper_like = {k: paper.OMNIGLOT_LIFELONG[(ex.ROWS[k][0], 10 if ex.ROWS[k][1] in (None, 0) else 50,
                                                ex.ROWS[k][2])] for k in ex.PAPER_ROWS}
    out = claims.lifelong_omniglot(_df(paper_like))
    assert len(out) == 14 and all(h for t, h, _ in out if t.startswith("[task-aware]"))
    # rows not made yet: their claims are left out
    assert len(claims.lifelong_omniglot(_df({"online": 3.5, "rehearsal-10": 3.6}))) == 2


def test_settings_count_the_rows():
    ctx = Context("paper", [0, 1, 2, 3, 4], torch.device("cpu"))
    s = ex.settings(ctx).set_index("setting")["value"]
    assert s["rows"] == "7 of the paper and 5 beyond it (12 in all), and the paper's 7 with a single head"
    assert s["items"].startswith("11: 2 first pass, 2 more seeds, 7 beyond")
    assert "carried over" in s["GEM, as published"] and s["GEM, as published"].startswith("SGD, lr 0.1")


def _runs(values, measure_of, heads="task masks", seeds=(0, 1)):
    """run_rows-like rows of the paper's rows: ACC_task and ACC_class from ``measure_of(paper value)``."""
    out = []
    for key in ex.PAPER_ROWS:
        p = values[key]
        t, c = measure_of(p)
        for s in seeds:
            out.append(dict(key=key, row=key, method=ex.ROWS[key][0], baseline=None, budget=10, steps=1, paper=p,
                            beyond=False, runnable=True, reason="", optimizer="-", memory="-", heads=heads, seed=s,
                            ACC_task=t, ACC_class=c))
    return pd.DataFrame(out)


PAPER_VALUES = {k: paper.OMNIGLOT_LIFELONG[(ex.ROWS[k][0], 10 if ex.ROWS[k][1] in (None, 0) else 50, ex.ROWS[k][2])]
                for k in ex.PAPER_ROWS}


def test_which_accuracy_the_paper_reports_compares_two_trainings():
    # masked models whose task-aware accuracy is the paper's; single-head models far off the paper
    masked = _runs(PAPER_VALUES, lambda p: (p, p / 100))
    single = _runs(PAPER_VALUES, lambda p: (50.0, 20 - p), heads="single head", seeds=(0,))
    fit = ex.measure_fit(masked, single).set_index("reading")
    assert list(fit.index) == [r[0] for r in ex.READINGS]
    t, c = fit.loc["task-aware, task-masked training"], fit.loc["class-incremental, single-head training"]
    assert t["rows"] == c["rows"] == 7 and (t["seeds"], c["seeds"]) == (2, 1)
    assert t["mean |ours - paper|"] == pytest.approx(0.0) and t["rank correlation"] == pytest.approx(1.0)
    assert c["rank correlation"] == pytest.approx(-1.0) and c["mean |ours - paper|"] > 5
    # the class-incremental reading reads the single-head runs, not the masked models' class-incremental accuracy
    single2 = _runs(PAPER_VALUES, lambda p: (0.0, p), heads="single head", seeds=(0,))
    c2 = ex.measure_fit(masked, single2).set_index("reading").loc["class-incremental, single-head training"]
    assert c2["mean |ours - paper|"] == pytest.approx(0.0)
    rows_ = ex.measure_rows(masked, single2)
    assert list(rows_.columns) == ["row", "paper", "task masks: task-aware", "task masks: class-incremental",
                                   "single head: task-aware", "single head: class-incremental"]
    assert rows_["single head: class-incremental"].tolist() == rows_["paper"].tolist()
    # only the paper's rows that both trainings made
    part = single2[single2.key.isin(ex.SINGLE_HEAD["single-head-1step-s0"])]
    assert ex.measure_fit(masked, part)["rows"].tolist() == [5, 5]
    m = I.Missing(["lifelong-omniglot/single-head-1step-s0"])
    assert ex.measure_fit(masked, m) is m and ex.measure_rows(masked, m) is m


# ------------------------------------------------------------------------------------------------
# lifelong_common: payloads, resuming, selection
# ------------------------------------------------------------------------------------------------


def _Job(ck, deadline=None):
    return I.Job(I.get_item("lifelong-omniglot/fused-1step-s0"), "smoke", None, torch.device("cpu"),
                 checkpoint_dir=ck, deadline=deadline)


class _Boom(Exception):
    pass


class _SaveThenDie(Checkpointer):
    """A checkpointer that saves at the first task end and then kills the run."""

    def __init__(self, path):
        super().__init__(path, every=0.0)

    def maybe_save(self, state_fn, generators=None, force=False):
        if super().maybe_save(state_fn, generators, force):
            raise _Boom
        return False


CFGS = [LifelongConfig("online", model_kwargs={"nf": 2}, replay=2),
        LifelongConfig("recollection", budget=1, code=(8, 2), model_kwargs={"nf": 2}, replay=2)]


def test_a_killed_run_resumes_to_the_unbroken_payload(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    st = synth(per=6)
    full = L.run_fused(_Job(None), st, CFGS, [0, 1])
    ck = tmp_path / "ck" / "item-x"
    monkeypatch.setattr(L, "Checkpointer", _SaveThenDie)
    with pytest.raises(_Boom):
        L.run_fused(_Job(ck), st, CFGS, [0, 1])
    assert pathlib.Path(str(ck) + ".ckpt").exists()
    monkeypatch.setattr(L, "Checkpointer", Checkpointer)
    resumed = L.run_fused(_Job(ck), st, CFGS, [0, 1])
    assert R.fingerprint(resumed) == R.fingerprint(full)
    assert not pathlib.Path(str(ck) + ".ckpt").exists()  # deleted once the run is done


def test_a_run_stops_before_its_deadline_at_a_task_end_and_continues_exactly(tmp_path):
    """``Job.boundary``: with too little time for another task the run saves at a task's end and raises
    Incomplete; the same call again continues it to the unbroken payload. No checkpoint directory:
    it never stops (the work would be lost)."""
    import time

    torch.set_num_threads(1)
    st = synth(per=6)
    full = L.run_fused(_Job(None), st, CFGS, [0, 1])
    assert R.fingerprint(L.run_fused(_Job(None, deadline=time.monotonic()), st, CFGS, [0, 1])) == R.fingerprint(full)
    ck = tmp_path / "ck" / "item-x"
    stops = 0
    while True:
        try:
            resumed = L.run_fused(_Job(ck, deadline=time.monotonic()), st, CFGS, [0, 1])
            break
        except I.Incomplete as e:
            stops += 1
            assert "before its deadline" in str(e) and pathlib.Path(str(ck) + ".ckpt").exists()
    assert stops == st.n_tasks - 1  # one task per call; the last task's end never stops
    assert R.fingerprint(resumed) == R.fingerprint(full)
    assert not pathlib.Path(str(ck) + ".ckpt").exists()


def test_payload_is_data_and_round_trips_through_a_result_file():
    torch.set_num_threads(1)
    st = synth(per=6)
    pl = L.run_fused(_Job(None), st, CFGS, [0, 1])
    assert set(pl) == {"stream", "seeds", "steps", "fused_configs", "rows"}  # no timings
    assert pl["rows"][0]["acc"].shape == (2, 4, 3) and pl["rows"][0]["acc"].dtype == torch.float32
    assert pl["stream"]["classes_per_task"] == [3, 3, 3]
    res = R.Result("lifelong-omniglot/x", "smoke", {}, "v", {}, pl)
    back = R.Result.from_files(*res.to_files()).payload
    assert R.fingerprint(back) == R.fingerprint(pl)
    a, b = L.results_of(pl), L.results_of(back)
    assert all(x.summary().equals(y.summary()) for x, y in zip(a, b))
    # the JSON part (what the GPU preflight compares) holds no accuracies: they are arrays
    body = R.encode(pl, {})
    assert "__array__" in str(body["rows"][0]["acc"])


def test_seed_tags_and_selection():
    assert L.seed_tag((0,)) == "s0" and L.seed_tag((1, 2, 3, 4)) == "s1-4" and L.seed_tag((0, 2)) == "s0+2"
    its = [I.get_item(k) for k in ex.item_keys()]
    paper_ctx = Context("paper", [0], torch.device("cpu"), seeds_given=(0,))
    assert {it.name for it in L.select_items(paper_ctx, its)} == {"fused-1step-s0", "fused-3step-s0", *ex.BEYOND_ROWS,
                                                                  *ex.SINGLE_HEAD}
    smoke_ctx = Context("smoke", [0], torch.device("cpu"))
    assert all(it.versioned_by is None for it in L.select_items(smoke_ctx, its))


def test_texts_of_optimizer_and_memory():
    c = LifelongConfig("recollection", budget=10, code=(62, 2), ae_lr=1e-4, steps=3)
    assert L.optimizer_text(c) == "Adam, lr 1e-3; autoencoder Adam, lr 1e-4; 3 steps per example"
    plan = vars(plan_storage(c, (1, 28, 28), 50, 1623))
    assert L.memory_text(c, plan, 50, 990) == "1,011 codes of 62 bits"
    # every baseline row says its optimizer, learning rate and batch
    g = LifelongConfig("gem", budget=100, **AS_PUBLISHED["gem"])
    assert L.optimizer_text(g) == "SGD, lr 0.1; QP margin 0.5; batches of 10 examples, 1 step each"
    assert L.memory_text(g, vars(plan_storage(g, (1, 28, 28), 50, 1623)), 50, 990) == \
        "2 images per task (100) + 9 of the incoming batch"
    s = LifelongConfig("online", train_mask="none")
    assert L.optimizer_text(s) == "Adam, lr 1e-3; single head (no task masks); 1 step per example"
    assert [L.lr_text(v) for v in (1.0, 0.1, 0.05, 1e-3, 3e-4, 1e-4)] == ["1", "0.1", "0.05", "1e-3", "3e-4", "1e-4"]


def test_the_lifelong_loop_counts_incoming_batches():
    loops = {l.name: (l.steps, l.captured) for l in L.lifelong_loops({"gem"}, True, [25, 10, 3], 30, 3, 1000, 10)}
    assert loops == {"lifelong": (3, L.CAPTURED), "lifelong-2nd": (1, L.CAPTURED), "lifelong-later": (1, L.CAPTURED),
                     "eval": (4, False)}
    assert sum(l.steps for l in L.lifelong_loops({"online"}, True, [25, 10, 3], 30, 3, 1000)[:3]) == 38
    # a growing step: the mean task index over the later tasks' steps beyond the probe's third task
    # (30 steps at t=2, 10 at t=3: mean 2.25, 0.25 units of growth)
    later = L.lifelong_loops({"gem"}, True, [25, 10, 30, 10], 30, 4, 1000, grows=True)[2]
    assert later.name == "lifelong-later" and later.grows_from == "lifelong-2nd"
    assert later.growth == pytest.approx((30 * 2 + 10 * 3) / 40 - 2)
    assert L.lifelong_loops({"online"}, True, [25], 30, 1, 1000)[0].steps == 25  # one task: no later steps
    assert [l.name for l in L.lifelong_loops({"online"}, True, [25, 5], 30, 2, 1000)] == ["lifelong", "lifelong-2nd",
                                                                                          "eval"]
    assert L.lifelong_loops({"icarl"}, False, [25], 30, 1, 1000, 10) == []
    assert L.CAPTURED is True
