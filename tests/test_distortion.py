"""recollect.experiments.distortion: accounting of Tables 5-6, eqs 3-4, the items and their configs,
resumable fused training, matched-bits comparison and claims. Fast: tiny models on synthetic images."""
import math
import os

import pandas as pd
import pytest
import torch

from recollect import accounting, claims, paper
from recollect.experiments import distortion as ex
from recollect.experiments import items as I
from recollect.models import CategoricalVAE

torch.set_num_threads(1)


def synthetic(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for i in range(n):
        r, c, w = torch.randint(6, 20, (3,), generator=g).tolist()
        x[i, 0, r - 4:r + 4, c - 1:c + 2 + w % 4] = 255
        x[i, 0, r, c - 5:c + 5] = 40 * (w % 6)
    return x


TRAIN = dict(seed=0, n_train=48, epochs=2, batch_size=16, lrs=[1e-2, 1e-3], kl_weight=0.0, tau=1.0,
             curve_images=16, eval_batch=32, optimizer="adam", loss="bce")


@pytest.fixture
def fake_data(monkeypatch):
    monkeypatch.setattr(ex, "_train_images", lambda n: synthetic(n))


# ---------------------------------------------------------------------------------------------- accounting
def test_every_compression_ratio_equals_the_papers():
    cc = ex.compression_check()
    assert len(cc) == len(paper.TABLE5) + len(paper.TABLE6) == 33
    assert cc["equal"].all()


def test_compression_check_would_catch_a_wrong_latent(monkeypatch):
    monkeypatch.setattr(ex, "_LATENT", 8)  # a 2x4 map instead of 2x2: Table 6 no longer matches
    assert not ex.compression_check()["equal"].all()


def test_vae_param_bits_is_the_real_models():
    for c, l in [(6, 2), (38, 2), (8, 6), (13, 3)]:
        real = accounting.param_bits(CategoricalVAE(c, l))
        assert ex.vae_param_bits(c, l) == real
        f = math.ceil(c * l / 4)
        assert real == 32 * (100 * f * f + 55 * f + 1)  # 3 convs + 3 transposed convs, kernel 5


def test_budget_search_solutions_fit_and_eq4_is_harsher():
    df = ex.budget_search(fractions=(0.02,), rhos=(1.0, 0.1), n_examples=50_000)
    assert len(df) == 2
    for r in df.itertuples(index=False):
        rate, rho, n = r[1], r.rho, r.N
        c3, l3 = map(int, r[5].strip("()").split(", "))
        c4, l4 = map(int, r[8].strip("()").split(", "))
        assert rho * accounting.sbe_bits(c3, l3) <= rate + 1e-9
        assert rho * accounting.sbe_bits(c3 + 1, l3) > rate  # the largest c for that l
        assert n * rho * accounting.sbe_bits(c4, l4) + ex.vae_param_bits(c4, l4) <= rate * n + 1e-6
        assert r[9] <= r[6]  # eq 4 capacity <= eq 3 capacity


def test_budget_search_reports_when_nothing_fits():
    df = ex.budget_search(fractions=0.01, rhos=1.0, n_examples=1)  # 63 bits cannot hold any model
    assert df["eq 4 (c, l)"].iloc[0] == "nothing fits" and math.isnan(df["eq 4 C_ve"].iloc[0])


# ---------------------------------------------------------------------------------------------- training
CFG = ex.AEConfig("categorical", (4, 2), n_train=48, epochs=2, batch_size=16, lrs=(1e-2, 1e-3), curve_images=16,
                  eval_batch=32)


def _job(cfg, ck=None, deadline=None):
    from recollect.experiments.items import Job, get_item

    return Job(get_item("distortion/ae-categorical-6-2"), "smoke", cfg, torch.device("cpu"), checkpoint_dir=ck,
               deadline=deadline)


def test_configs_derive_smoke_and_probe_from_the_paper_profile():
    paper_cfg = ex.AEConfig("categorical", (392, 3))
    assert (paper_cfg.n_train, paper_cfg.epochs, paper_cfg.lrs) == (50_000, 15, (1e-2, 1e-3, 1e-4, 1e-5))
    probe = paper_cfg.probe()
    assert probe.size == paper_cfg.size and probe.batch_size == paper_cfg.batch_size and probe.lrs == paper_cfg.lrs
    assert probe.n_train == 3 * probe.batch_size and probe.epochs == 1
    smoke = paper_cfg.smoke()
    assert smoke.n_train < paper_cfg.n_train and smoke.size == paper_cfg.size


def test_the_dry_run_trains_one_minibatch_at_the_paper_s_shapes():
    from recollect.experiments.items import get_item

    it = get_item("distortion/ae-categorical-209-8")
    dry, probe = it.cfg("dry"), it.cfg("probe")
    assert (dry.size, dry.batch_size, dry.lrs, dry.eval_batch, dry.precision) == (
        probe.size, probe.batch_size, probe.lrs, probe.eval_batch, probe.precision)
    assert dry.n_train == dry.batch_size and dry.epochs == 1 and dry.curve_images < probe.curve_images
    assert {l.name: l.steps for l in it.loops(dry)} == {"epochs": 1, "eval": 2}
    b = get_item("distortion/bf16-check")
    assert b.cfg("dry").rows == b.cfg("paper").rows and b.cfg("dry").n_train == b.cfg("paper").batch_size
    # a config without a dry() of its own is dry-run at its probe
    j = get_item("distortion/jpeg")
    assert j.cfg("dry") == j.cfg("probe")


def test_every_architecture_of_both_tables_is_an_item_and_the_bce_runs_are_shared():
    from recollect.experiments.items import registry

    reg = registry()
    for c, l in paper.TABLE5:
        assert f"distortion/ae-categorical-{c}-{l}" in reg
    for h in paper.TABLE6:
        assert f"distortion/ae-continuous-{h}" in reg
    # the loss comparison's BCE runs are Table 5's items: only the KL runs are items of their own
    kl = [k for k in reg if k.startswith("distortion/") and k.endswith("-kl")]
    assert sorted(kl) == sorted(f"distortion/ae-categorical-{c}-{l}-kl" for c, l in ex.LOSS_ROWS + ex.SMOKE_LOSS_ROWS)


def test_train_architecture_fuses_learning_rates_and_records_curves(fake_data):
    r = ex.train_architecture(_job(CFG))
    assert len(r["distortion"]) == 2 and len(r["loss"]) == 2 and len(r["curve"]) == 2
    assert all(len(v) == 2 for v in r["loss"] + r["curve"])
    assert r["params"] == accounting.param_count(CategoricalVAE(4, 2))
    assert r["distortion"][0] != r["distortion"][1]  # two learning rates, two different models
    assert all(0 < d < 1 for d in r["distortion"])
    assert ex.train_architecture(_job(CFG)) == r  # deterministic: a payload is a function of its config


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("kind,size", [("categorical", (4, 2)), ("continuous", (1,))])
def test_interrupted_training_resumes_to_the_same_result(fake_data, tmp_path, monkeypatch, kind, size):
    from recollect.train.checkpoint import Checkpointer

    cfg = ex.AEConfig(kind, size, n_train=48, epochs=3, batch_size=16, lrs=(1e-2, 1e-3), curve_images=16,
                      eval_batch=32)
    ref = ex.train_architecture(_job(cfg))
    real = Checkpointer.maybe_save

    def save_then_die(self, state_fn, generators=None, force=False):
        real(self, state_fn, generators, force=True)  # save at the first epoch's end, then a kill
        raise _Interrupt

    monkeypatch.setattr(Checkpointer, "maybe_save", save_then_die)
    with pytest.raises(_Interrupt):
        ex.train_architecture(_job(cfg, tmp_path / "ae"))
    monkeypatch.setattr(Checkpointer, "maybe_save", real)
    assert (tmp_path / "ae.ckpt").exists() and (tmp_path / "ae.seconds").exists()
    res = ex.train_architecture(_job(cfg, tmp_path / "ae"))
    assert res == ref
    assert not (tmp_path / "ae.ckpt").exists()  # the finished item drops its checkpoint
    assert not (tmp_path / "ae.seconds").exists()


def test_training_stops_before_its_deadline_at_an_epoch_end_and_continues_exactly(fake_data, tmp_path):
    import time

    from recollect.experiments.items import Incomplete

    cfg = ex.AEConfig("categorical", (4, 2), n_train=48, epochs=3, batch_size=16, lrs=(1e-2, 1e-3), curve_images=16,
                      eval_batch=32)
    ref = ex.train_architecture(_job(cfg))
    stops = 0
    while True:
        try:
            res = ex.train_architecture(_job(cfg, tmp_path / "ae", deadline=time.monotonic() + 1e-3))
            break
        except Incomplete:
            stops += 1
            assert (tmp_path / "ae.ckpt").exists()
    assert stops == cfg.epochs - 1 and res == ref
    assert not (tmp_path / "ae.ckpt").exists()


# ---------------------------------------------------------------------------------------------- tables
def _t5(rows):
    """A Table 5 frame as run_table5 returns it, from {(c, l): {lr: distortion}}."""
    labels = [dict(c=c, l=l, bits=accounting.sbe_bits(c, l), capacity=accounting.capacity_bits(c, l),
                   compression=accounting.compression_ratio(ex.IMAGE_BITS, accounting.sbe_bits(c, l)))
              for c, l in rows]
    results = [dict(lrs=list(v), distortion=list(v.values()), loss=[[0.5] * len(v)], curve=[[0.2] * len(v)],
                    params=1) for v in rows.values()]
    return ex._results_frame(results, labels)


def test_best_learning_rate_is_kept_and_rows_carry_the_paper():
    t5 = _t5({(6, 2): {1e-2: 0.2, 1e-3: 0.1}, (38, 2): {1e-2: 0.05, 1e-3: float("nan")}})
    rows = ex.table5_rows(t5)
    assert [(r["c"], r["l"], r["best lr"], r["ours"]) for r in rows] == [(6, 2, "1e-03", 0.1), (38, 2, "1e-02", 0.05)]
    assert rows[0]["paper"] == paper.TABLE5[(6, 2)][1] and rows[0]["compression"] == paper.TABLE5[(6, 2)][0]
    curves = ex.training_curves(t5)
    assert set(curves.columns) >= {"c", "l", "lr", "epoch", "train_loss", "curve_distortion"}


def test_the_widest_rows_train_at_the_two_rates_that_won_and_every_other_at_four():
    from recollect.experiments.items import get_item, registry

    wide = {(c, l) for c, l in paper.TABLE5 if c * l // 4 >= ex.BF16_FILTERS}
    assert wide == {(50, 18), (209, 8), (313, 4), (392, 3)}
    for key in registry():
        if key.startswith("distortion/ae-"):
            it = get_item(key)
            size = tuple(it.cfg("paper").size)
            expect = ex.WIDE_LRS if (size in wide and not key.endswith("-kl")) else paper.LR_SWEEP_FIG2
            assert it.cfg("paper").lrs == tuple(expect), key
            assert f"at {len(expect)} learning rates" in it.title, key
            assert bool(it.reduction) == (tuple(expect) == ex.WIDE_LRS), key
    assert ex.WIDE_LRS == (1e-2, 1e-3)


def test_lr_evidence_counts_wins_over_rows_at_all_four_rates_only():
    four = {1e-2: 0.30, 1e-3: 0.10, 1e-4: 0.12, 1e-5: 0.50}
    t5 = _t5({(6, 2): four, (38, 2): {1e-2: 0.05, 1e-3: 0.04, 1e-4: 0.045, 1e-5: 0.2},
              (209, 8): {1e-2: 0.03, 1e-3: 0.05}})  # two rates: left out of the count
    ev = ex.lr_evidence(t5).set_index("lr")
    assert ev["architectures"].tolist() == [2, 2, 2, 2]
    assert ev["best in"].tolist() == [0, 2, 0, 0]
    assert ev.loc["1e-04", "least excess"] == pytest.approx(0.005)
    assert ev.loc["1e-04", "least relative excess"] == pytest.approx(0.005 / 0.04)
    assert ev.loc["1e-02", "median excess"] == pytest.approx((0.20 + 0.01) / 2)
    assert ex.lr_evidence_text(ev.reset_index()).startswith("2 of 2 architectures")
    # (209, 8) did best at 1e-2, not at the lower edge of its two-rate sweep; at 1e-3 it would be named
    assert "none did best at 1e-03" in ex.lr_evidence_text(ex.lr_evidence(t5))
    t5c = _t5({(6, 2): four, (209, 8): {1e-2: 0.05, 1e-3: 0.03}})
    assert "1 did best at 1e-03, the lower edge of their sweep ((209, 8)" in ex.lr_evidence_text(ex.lr_evidence(t5c))
    # a row won by a rate left out of WIDE_LRS shows in the line
    t5b = _t5({(6, 2): {1e-2: 0.30, 1e-3: 0.10, 1e-4: 0.05, 1e-5: 0.50}})
    assert ex.lr_evidence_text(ex.lr_evidence(t5b)).startswith("0 of 1 architectures")
    assert ex.lr_evidence_text(ex.lr_evidence()) == "no architecture trained at all four learning rates yet"


def test_matched_bits_gives_each_baseline_at_most_the_vae_bits():
    t5 = _t5({(6, 2): {1e-2: 0.2}, (20, 2): {1e-2: 0.1}})  # 6 and 20 bits
    base = pd.DataFrame([
        dict(method="PCA, 8-bit coefficients", setting="k=1", bits=8, distortion=0.3),
        dict(method="PCA, 8-bit coefficients", setting="k=2", bits=16, distortion=0.25),
        dict(method="PCA, 8-bit coefficients", setting="k=3", bits=24, distortion=0.01),
        dict(method="k-means codebook", setting="K=2^6", bits=6, distortion=0.15),
        dict(method="k-means codebook", setting="K=2^7", bits=7, distortion=0.14),
    ])
    m = ex.matched_bits(t5, base).set_index("bits")
    assert math.isnan(m.loc[6, "PCA, 8-bit coefficients"])  # one 8-bit coefficient is already too many
    assert m.loc[20, "PCA, 8-bit coefficients"] == 0.25  # k=2 (16 bits), not k=3 (24 bits)
    assert m.loc[6, "k-means codebook"] == 0.15
    assert math.isnan(m.loc[20, "k-means codebook"])  # 2^20 centroids: k-means stops before
    summ = ex.matched_bits_summary(ex.matched_bits(t5, base)).set_index("baseline")
    assert summ.loc["PCA, 8-bit coefficients", "rows compared"] == 1  # only the 20-bit row has a setting
    assert summ.loc["PCA, 8-bit coefficients", "VAE lower"] == 1 and summ.loc["PCA, 8-bit coefficients", "baseline lower"] == 0
    assert summ.loc["PCA, 8-bit coefficients", "median ratio baseline / VAE"] == pytest.approx(0.25 / 0.1)
    assert summ.loc["k-means codebook", "baseline lower"] == 1  # 0.15 against the (6, 2) VAE's 0.2
    assert summ.loc["k-means codebook", "baseline lower at (c, l)"] == "(6, 2)"
    assert isinstance(ex.matched_bits_summary(I.Missing(["distortion/baselines"])), I.Missing)


def test_claims_follow_the_numbers():
    by_rho = ex.budget_search(fractions=(0.02,), rhos=(1.0, 0.5), n_examples=50_000)
    by_n = ex.budget_search(fractions=0.1, rhos=0.1, n_examples=[1_000, 100_000])

    def t6(d):
        labels = [dict(h=h, floats=4 * h, bits=128 * h, compression=49 / h) for h in d]
        res = [dict(lrs=[1e-3], distortion=[v], loss=[[0.5]], curve=[[0.2]], params=1, seconds=1.0) for v in d.values()]
        return ex._results_frame(res, labels)

    t5 = _t5({(6, 2): {1e-3: 0.14}, (38, 2): {1e-3: 0.06}, (168, 2): {1e-3: 0.02}})
    good = dict((c, h) for c, h, _ in claims.distortion(t5, t6({1: 0.13, 20: 0.015}), by_rho, by_n))
    assert good[next(k for k in good if k.startswith("Categorical"))] is True
    assert good[next(k for k in good if "capacity C_ve" in k)] is True
    evidence = {c: e for c, _, e in claims.distortion(t5, t6({1: 0.13, 20: 0.015}), by_rho, by_n)}
    # h=20's distortion is below every categorical row's: listed as not compared, not silently dropped
    assert "not compared: h=20 (no categorical row made so far" in evidence[next(k for k in evidence
                                                                               if k.startswith("Categorical"))]
    bad = dict((c, h) for c, h, _ in claims.distortion(t5, t6({1: 0.01}), by_rho, by_n))
    assert bad[next(k for k in bad if k.startswith("Categorical"))] is False
    assert all(good[k] for k in good if "eq" in k.lower() or "rho" in k)


def test_the_capacity_claim_holds_at_its_threshold_as_printed():
    """Four rows whose rank correlation is -0.8 (computed as -0.7999999999999999) meet "<= -0.8"."""
    by_rho = ex.budget_search(fractions=(0.02,), rhos=(1.0,), n_examples=50_000)
    by_n = ex.budget_search(fractions=0.1, rhos=0.1, n_examples=[1_000, 100_000])
    # capacities of (6, 2), (20, 2), (38, 2), (168, 2) rise; distortion ranks 3, 4, 2, 1 give rho = -0.8
    t5 = _t5({(6, 2): {1e-3: 0.10}, (20, 2): {1e-3: 0.12}, (38, 2): {1e-3: 0.08}, (168, 2): {1e-3: 0.02}})
    got = {c: (h, ev) for c, h, ev in claims.distortion(t5, t5.iloc[:0], by_rho, by_n)
           if "capacity C_ve" in c}
    (holds, evidence), = got.values()
    assert holds is True and "-0.80" in evidence and "4 of 27 rows" in evidence
    t5 = _t5({(6, 2): {1e-3: 0.10}, (20, 2): {1e-3: 0.02}, (38, 2): {1e-3: 0.08}, (168, 2): {1e-3: 0.05}})
    (holds, evidence), = [(h, ev) for c, h, ev in claims.distortion(t5, t5.iloc[:0], by_rho, by_n)
                          if "capacity C_ve" in c]
    assert holds is False
