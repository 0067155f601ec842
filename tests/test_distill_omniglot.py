"""The Omniglot distillation chapter's library logic: split and task mask, eq 4 accounting, resuming the
teacher and the students exactly after a stop at the time limit, and the claims."""
import pandas as pd
import pytest
import torch

from recollect import paper
from recollect.cache import ResultCache
from recollect.experiments import Context
from recollect.experiments import distill_omniglot as ex

FULL = dict(train_fraction=0.9, split_seed=0, tasks=None)


def test_split_sizes_and_task_mask():
    tr, te, mask = ex.split(FULL)
    assert (len(tr), len(te)) == (29214, 3246)  # 18 + 2 drawers of each of the 1,623 characters
    assert mask.shape == (50, 1623) and int(mask.sum()) == 1623
    assert bool((mask.sum(0) == 1).all())  # every character belongs to exactly one alphabet
    assert bool(mask[te.task, te.y].all()) and bool(mask[tr.task, tr.y].all())
    assert torch.bincount(tr.y, minlength=1623).eq(18).all() and torch.bincount(te.y, minlength=1623).eq(2).all()
    small_tr, small_te, small_mask = ex.split(dict(FULL, tasks=3))
    assert torch.equal(small_mask, mask)  # the mask stays the full (50, 1623) one
    assert int(small_tr.task.max()) == 2 and len(small_tr) == 18 * int(mask[:3].sum())


def test_storage_accounting_is_eq4():
    assert ex.n_train() == 29214
    acct = ex.paper_storage().set_index("generator")
    r = acct.loc["100x"]
    assert (r.bits_per_code, r.buffer_bits, r.param_bits) == (32, 29214 * 32, 32 * r.params)
    assert r.total_bits == 29214 * 32 + 32 * r.params
    assert r.total_ratio == pytest.approx(29214 * 6272 / r.total_bits)
    assert acct.loc["10x"].total_ratio == pytest.approx(9.9596, abs=1e-4)
    assert acct.loc["50x"].per_sample_ratio == pytest.approx(6272 / 50)
    assert list(acct.sample_images) == [2921, 584, 292]
    assert ex.eq4_sizes(29214) == {"10x": [132, 2], "50x": [50, 2], "100x": [32, 2]}
    t = ex.eq4_table()
    assert list(t.verdict) == ["agrees"] * 3 and list(t["fits the budget"]) == [False, True, True]


def test_eq4_table_differs_for_a_code_off_budget(monkeypatch):
    monkeypatch.setattr(paper, "OMNIGLOT_GENERATORS", {"10x": (100, 2), "50x": (50, 2), "100x": (32, 2)})
    t = ex.eq4_table()
    assert list(t.verdict) == ["differs", "agrees", "agrees"]


def _tiny_config(columns=("Real Data", "10% Sample")):
    d = dict(train_fraction=0.9, split_seed=0, tasks=1)
    teacher = dict(data=d, arch="resnet18", nf=1, seed=0, batch_size=180, epochs=2, lr=1e-3, eval_batch=1000)
    students = dict(seeds=[0, 1], columns=list(columns), arch="resnet18", nf=1, lr=1e-3, batch_size=1,
                    episodes=[4, 8], chunk=2, checkpoint_every=4)
    return dict(data=d, teacher=teacher, generators={}, students=students, threads=1)


@pytest.fixture
def paper_ctx(tmp_path, monkeypatch):
    """A paper-profile context on the CPU (checkpoints on) with a tiny config."""
    monkeypatch.setattr(ex, "config", lambda ctx: _tiny_config())
    return lambda name: Context("paper", [0, 1], torch.device("cpu"), ResultCache(tmp_path / name))


def test_students_resume_exactly_after_the_time_limit(paper_ctx, monkeypatch):
    models = []
    original = ex.train_students

    def keep_model(*a, **kw):
        run = original(*a, **dict(kw, return_model=True))
        models.append({k: v.clone() for k, v in run.model.state_dict().items()})
        return run

    monkeypatch.setattr(ex, "train_students", keep_model)
    whole = ex.run_students(paper_ctx("whole"))
    ctx = paper_ctx("stopped")
    monkeypatch.setattr(ex, "_time_left", lambda: 1e-9)  # stop at the first checkpoint (4 episodes)
    with pytest.raises(ex.Incomplete, match="4 of 8 episodes"):
        ex.run_students(ctx)
    assert ctx.cache.get_checkpoint(ex.config_key(f"{ex.NAME}-students", ex._students_config(ex.config(ctx))))
    monkeypatch.setattr(ex, "_time_left", lambda: None)
    resumed = ex.run_students(ctx)
    pd.testing.assert_frame_equal(whole, resumed)
    assert len(models) == 3  # whole, stopped, resumed: the resumed students equal the uninterrupted ones
    assert all(torch.equal(models[0][k], models[2][k]) for k in models[0])
    assert not all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert list(whole.columns) == ["column", "seed", "episodes", "accuracy"]
    assert len(whole) == 2 * 2 * 2 and whole.attrs["model_steps"] == 4 * 8


def test_teacher_resumes_exactly_after_the_time_limit(paper_ctx, monkeypatch):
    whole = ex.run_teacher(paper_ctx("whole"))
    ctx = paper_ctx("stopped")
    monkeypatch.setattr(ex, "_time_left", lambda: -1.0)
    with pytest.raises(ex.Incomplete):
        ex.run_teacher(ctx)
    monkeypatch.setattr(ex, "_time_left", lambda: None)
    resumed = ex.run_teacher(ctx)
    assert len(resumed) == 2
    pd.testing.assert_frame_equal(whole, resumed)


def _summary(values: dict, episodes=1_000_000):
    return pd.DataFrame([dict(column=c, episodes=episodes, mean=v, sd=0.0, runs=5) for c, v in values.items()])


def test_claims_on_the_papers_numbers():
    teacher = pd.DataFrame(dict(epoch=[1], train_loss=[0.1], test_acc=[paper.OMNIGLOT_TEACHER_ACC]))
    vals = dict(paper.OMNIGLOT_DISTILL, **{"Real Data": paper.OMNIGLOT_TEACHER_ACC - 1.0})
    cl = ex.claims(_summary(vals), teacher, ex.eq4_table())
    assert [h for _, h, _ in cl] == [True] * 5
    # swap 10x and 100x: recollections no longer fall with compression, and 100x vs 1% is not wide
    worse = dict(vals, **{"10x Compress": 10.0, "100x Compress": 87.86, "Real Data": 50.0})
    held = {c.split(" (")[0]: h for c, h, _ in ex.claims(_summary(worse), teacher)}
    assert not held["Accuracy from recollections falls as compression grows"]
    assert not held["Lossy recollections beat lossless samples of equal storage by a wide margin"]
    assert not any(h for c, h in held.items() if c.startswith("Students trained on all real examples"))


def test_compare_table_paper_beside_ours():
    vals = {c: 50.0 for c in ex.COLUMNS}
    t = ex.compare_table(_summary(vals)).set_index("column")
    assert t.loc["Real Data", "verdict"].startswith("no verdict")
    assert t.loc["10x Compress", "paper"] == paper.OMNIGLOT_DISTILL["10x Compress"]
    assert t.loc["1% Sample", "verdict"] == "differs" and t.loc["100x Compress", "verdict"] == "agrees"
