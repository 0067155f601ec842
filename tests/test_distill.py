"""The distillation engine of section 5.1 (recollect.train.distill), and the items both distillation
chapters share (recollect.experiments.distill_common) with the MNIST chapter's accounting and
learning-rate selection (recollect.experiments.distill_mnist). All fast: tiny students and pools."""
import copy

import pandas as pd
import pytest
import torch

from recollect import paper
from recollect.grouped import GroupedAdam
from recollect.models import MLP, CategoricalVAE, LeNet
from recollect.train.autoencoder import decode_all
from recollect.train.distill import (Pool, _soft_loss, code_sampling_pool, hardest, labelled_pool,
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
def test_student_optimizer_state_is_checked():
    """train_students' optimizer is GroupedAdam (one learning rate per group); a saved state must match
    the run's learning rates."""
    from recollect.train.distill import _optimizer_state
    m = tiny_mlp(2)
    o = GroupedAdam(m.parameters(), lr=torch.tensor([1e-3, 1e-4], dtype=torch.float64))
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    o.step()
    st = copy.deepcopy(o.state_dict())
    assert _optimizer_state(st, o, [1e-3, 1e-4]) is st
    with pytest.raises(ValueError, match="another run"):
        _optimizer_state(st, o, [1e-3, 1e-3])


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
    full = train_students(tiny_mlp, pools, on_checkpoint=lambda state_fn: saved.append(state_fn()), **kw)
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


def test_eq4_picks_the_papers_mnist_generators_and_the_smoke_sizes():
    from recollect.experiments import distill_common as dc
    from recollect.experiments import distill_mnist as ex

    assert dc.eq4_sizes(50_000) == {g: list(v) for g, v in paper.MNIST_GENERATORS.items()}
    smoke = {g: (cfg.smoke().c, cfg.smoke().l) for g, cfg in ex.GENERATORS.items()}
    assert smoke == {g: tuple(v) for g, v in dc.eq4_sizes(ex.SMOKE_DATA.n_train).items()}


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


def test_missing_results_pass_through_the_chapter_functions():
    from recollect import claims, figures
    from recollect.experiments import distill_mnist as ex
    from recollect.experiments.items import Missing

    m = Missing(["distill-mnist/students-lenet"])
    assert ex.summarize(m) is m and ex.compare_table(m, "lenet") is m and claims.distill_mnist(m, None) is m
    assert figures.distill_mnist_figure4(m) is m and figures.distill_mnist_recollections(m) is m and ex.teacher_rows(m) is m and ex.generator_summary(m) is m


# ------------------------------------------------------------------------------------------------ items
def test_paper_profile_reads_in_one_place_and_matches_section_5_1():
    from recollect.experiments import distill_mnist as ex
    from recollect.experiments.items import chapter_items

    t = ex.TEACHER
    assert (t.arch, t.epochs, t.data.n_train, t.select) == ("lenet", 500, 50_000, "val")
    for g, (c, l) in paper.MNIST_GENERATORS.items():
        cfg = ex.GENERATORS[g]
        assert (cfg.c, cfg.l, cfg.epochs, cfg.data.n_train) == (c, l, 500, 50_000)
    lenet, mlp, code = (ex.STUDENTS[k] for k in ("students-lenet", "students-mlp", "code-sampling"))
    assert lenet.columns == tuple(paper.TABLE_COLUMNS) and lenet.episodes == tuple(paper.EPISODES)
    assert lenet.lrs == tuple(paper.LR_DISTILL) and len(lenet.seeds) == 5 and mlp.arch == "mlp"
    assert lenet.groups() == 160 and mlp.groups() == 160 and code.groups() == 20
    items = {it.name: it for it in chapter_items("distill-mnist")}
    assert set(items) == {"teacher", "generator-10x", "generator-50x", "generator-100x", "students-lenet",
                          "students-mlp", "code-sampling"}
    assert items["code-sampling"].depends == ("teacher", "generator-10x", "generator-100x")
    assert all(it.stage == "first" and it.versioned_by is None for it in items.values())
    for it in items.values():  # the probe keeps the paper's shapes and runs every loop at least 3 steps
        probe = it.cfg("probe")
        assert all(l.steps >= 3 for l in it.loops(probe)), it.name
        if hasattr(probe, "groups"):
            assert probe.groups() == it.cfg("paper").groups()


def test_no_two_roles_share_a_seed():
    """Every model and random stream of both chapters (paper and smoke profiles) has a seed of its own."""
    from recollect.experiments import distill_mnist as mn
    from recollect.experiments import distill_omniglot as om
    from recollect.utils import derive_seed

    for profile in ("paper", "smoke"):
        roles = {f"mnist/{k}": v for k, v in mn.seeds(profile).items()}
        roles.update({f"omniglot/{k}": v for k, v in om.seeds(profile).items()})
        seen = {}
        for role, seed in roles.items():
            assert seed not in seen, f"{role} and {seen[seed]} share the seed {seed}"
            seen[seed] = role
        assert all(0 <= s < 2 ** 63 for s in roles.values())
    # stable across processes (a hash of the parts, not Python's hash())
    assert derive_seed("mnist", "student", "lenet", 0) == 6271473400623661056
    assert derive_seed("mnist", "student", "lenet", 0) != derive_seed("mnist", "teacher", "lenet", 0)
    assert derive_seed(1) != derive_seed("1")
    with pytest.raises(ValueError):
        derive_seed(0.5)


def _tiny_mnist():
    """A teacher, one generator and students of every kind at tiny sizes (MNIST, LeNet)."""
    from dataclasses import replace

    from recollect.experiments import distill_mnist as ex
    from recollect.experiments.distill_common import MnistData

    d = MnistData(n_train=64, n_val=32, n_test=32)
    teacher = replace(ex.TEACHER, data=d, epochs=2, batch_size=32, schedule=((1, 1e-3), (2, 1e-4)))
    gen = replace(ex.GENERATORS["100x"], c=6, l=2, data=d, epochs=1, batch_size=32, curve_images=16)
    students = replace(ex.STUDENTS["students-lenet"], data=d, columns=("Real Data", "1% Sample", "Real x / Teacher y",
                                                                      "100x Compress"),
                       code_sampling=("100x",), lrs=(1e-3,), seeds=(0, 1), episodes=(2, 4), chunk=2)
    return teacher, gen, students


def _job(key, cfg, deps=None, ck=None, deadline=None):
    import torch as _t

    from recollect.experiments.items import Job, get_item

    return Job(get_item(key), "smoke", cfg, _t.device("cpu"), deps or {}, ck, deadline=deadline)


def _chain(ck_root=None):
    from recollect.experiments import distill_common as dc

    teacher, gen, students = _tiny_mnist()
    ck = (lambda n: None) if ck_root is None else (lambda n: ck_root / n)
    t = dc.train_teacher(_job("distill-mnist/teacher", teacher, ck=ck("teacher")))
    g = dc.train_generator(_job("distill-mnist/generator-100x", gen, ck=ck("gen")))
    deps = {"distill-mnist/teacher": t, "distill-mnist/generator-100x": g}
    s = dc.run_students(_job("distill-mnist/students-lenet", students, deps, ck=ck("students")))
    return t, g, s


def test_items_run_from_payloads_deterministically_and_store_compactly(tmp_path):
    from recollect import results as R
    from recollect.experiments import distill_common as dc

    t, g, s = _chain()
    assert R.fingerprint(t) == R.fingerprint(_chain()[0])
    assert R.fingerprint(s) == R.fingerprint(_chain()[2])
    # the teacher: weights of one float32 model, the per-epoch curve, the epoch kept on validation
    assert all(v.dtype == torch.float32 and v.shape[0] == 1 for v in t["weights"].values())
    assert list(t["curve"].columns) == ["epoch", "lr", "train_loss", "val_acc", "test_acc"] and len(t["curve"]) == 2
    assert t["val_acc"] == t["curve"]["val_acc"].max()
    teacher = dc.load_classifier(t)
    assert torch.equal(next(teacher.parameters()), next(iter(t["weights"].values())))
    # the generator: its buffer holds one packed code per training image, labels as small ints
    vae, buf = dc.load_generator(g)
    assert len(buf) == 64 and buf.codes().shape == (1, 64, 6) and g["buffer"]["y"].dtype == torch.int16
    assert g["buffer"]["store"].dtype == torch.uint8 and len(g["curve"]) == 1
    # the students: every group at every checkpoint on validation and test; the pools they saw
    acc = s["accuracy"]
    assert s["groups"] == (4 + 1) * 2 + 4 * 2  # (4 columns + code sampling) random, 4 columns active; 2 runs
    assert len(acc) == s["groups"] * 2 * 2 and set(acc.split) == {"val", "test"}
    assert set(s["pools"].source) == {"Real Data", "1% Sample", "Real x / Teacher y", "100x Compress",
                                      "Code sampling 100x"}
    # results round-trip through the store, and no payload holds a timing
    for name, p in (("teacher", t), ("generator-100x", g), ("students-lenet", s)):
        res = R.Result(f"distill-mnist/{name}", "smoke", {}, "v", {}, p)
        R.ResultStore(tmp_path).put(res)
        back = R.ResultStore(tmp_path).read(f"distill-mnist/{name}")
        assert R.fingerprint(back.payload) == R.fingerprint(p)
        assert not any("second" in k or "time" in k for k in p)


def test_no_student_starts_from_the_teachers_initial_weights(monkeypatch):
    """The teacher and every student (all runs) are initialised under seeds of their own: the student
    run passes the derived seeds to train_students, and none of the initial weights is the teacher's."""
    from recollect.experiments import distill_common as dc
    from recollect.train.distill import init_students

    inits, captured = [], []
    orig_init, orig_train = dc.init_model, dc.train_students

    def spy_init(factory, seed):
        m = orig_init(factory, seed)
        inits.append({k: v.clone() for k, v in m.state_dict().items()})
        return m

    def spy_train(factory, pools, seeds=None, **kw):
        captured.append((factory, list(seeds)))
        return orig_train(factory, pools, seeds=seeds, **kw)

    monkeypatch.setattr(dc, "init_model", spy_init)
    monkeypatch.setattr(dc, "train_students", spy_train)
    _chain()
    teacher0 = inits[0]
    (factory, student_seeds), = captured
    teacher, _, students = _tiny_mnist()
    assert dc.teacher_seed(teacher) not in student_seeds
    assert sorted(set(student_seeds)) == sorted({dc.student_seed("mnist", "lenet", r) for r in students.seeds})
    fused = init_students(factory, sorted(set(student_seeds))).state_dict()
    for k, v in teacher0.items():
        for g in range(fused[k].shape[0]):
            assert not torch.equal(fused[k][g], v[0]), f"a student starts from the teacher's {k}"


def test_teacher_generator_and_students_resume_exactly_after_the_deadline(tmp_path):
    import time
    from dataclasses import replace

    from recollect import results as R
    from recollect.experiments import distill_common as dc

    whole = _chain()
    teacher, gen, students = _tiny_mnist()
    students = replace(students, checkpoint_every=2)
    past = time.monotonic() - 1.0  # a deadline already passed: stop after the first epoch, after saving
    with pytest.raises(dc.Incomplete):
        dc.train_teacher(_job("distill-mnist/teacher", teacher, ck=tmp_path / "teacher", deadline=past))
    assert (tmp_path / "teacher.ckpt").exists()
    t = dc.train_teacher(_job("distill-mnist/teacher", teacher, ck=tmp_path / "teacher"))
    assert R.fingerprint(t) == R.fingerprint(whole[0]) and not (tmp_path / "teacher.ckpt").exists()
    deps = {"distill-mnist/teacher": whole[0], "distill-mnist/generator-100x": whole[1]}
    with pytest.raises(dc.Incomplete, match="2 of 4 episodes"):  # stop at the first offer of a checkpoint
        dc.run_students(_job("distill-mnist/students-lenet", students, deps, ck=tmp_path / "students",
                             deadline=time.monotonic() + 1e-9))
    assert (tmp_path / "students.ckpt").exists()
    s = dc.run_students(_job("distill-mnist/students-lenet", students, deps, ck=tmp_path / "students"))
    assert R.fingerprint(s) == R.fingerprint(whole[2])


def test_loops_count_the_steps_the_trainers_take():
    """The plan multiplies each loop's steps (``Item.loops``) by a per-step cost: the counts must be the
    steps the trainers really tick."""
    from recollect.experiments import distill_common as dc
    from recollect.train import probe

    teacher, gen, students = _tiny_mnist()
    runs = []
    with probe.Recorder() as rec:
        t = dc.train_teacher(_job("distill-mnist/teacher", teacher))
    runs.append((dc.teacher_loops(teacher), rec))
    with probe.Recorder() as rec:
        g = dc.train_generator(_job("distill-mnist/generator-100x", gen))
    runs.append((dc.generator_loops(gen), rec))
    deps = {"distill-mnist/teacher": t, "distill-mnist/generator-100x": g}
    with probe.Recorder() as rec:
        dc.run_students(_job("distill-mnist/students-lenet", students, deps))
    runs.append((dc.student_loops(students), rec))
    for loops, rec in runs:
        assert {l.name: l.steps for l in loops} == {k: v.steps for k, v in rec.loops.items()}
