"""recollect.experiments.distortion: accounting of Tables 5-6, eqs 3-4, resumable fused training,
matched-bits comparison and claims. Fast: tiny models on synthetic images (the worker test uses 64
real MNIST images and is skipped without the data directory)."""
import math
import os
import pickle

import pandas as pd
import pytest
import torch

from recollect import accounting, paper
from recollect.cache import ResultCache, config_key
from recollect.experiments import Context
from recollect.experiments import distortion as ex
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
def test_arch_config_checks():
    with pytest.raises(ValueError):
        ex.arch_config(TRAIN, "binary", (4, 2))
    with pytest.raises(ValueError, match="KL"):
        ex.arch_config(TRAIN, "continuous", 2, kl_weight=1.0)
    a = ex.arch_config(TRAIN, "categorical", (4, 2))
    b = ex.arch_config(TRAIN, "categorical", (4, 2), kl_weight=0.0)
    assert config_key("x", a) == config_key("x", b)  # the loss-choice BCE runs are the Table 5 runs


def test_train_architecture_fuses_learning_rates_and_records_curves(fake_data, tmp_path):
    acfg = ex.arch_config(TRAIN, "categorical", (4, 2))
    r = ex.train_architecture(acfg, "cpu", ResultCache(tmp_path))
    assert len(r["distortion"]) == 2 and len(r["loss"]) == 2 and len(r["curve"]) == 2
    assert all(len(v) == 2 for v in r["loss"] + r["curve"])
    assert r["params"] == accounting.param_count(CategoricalVAE(4, 2))
    assert r["distortion"][0] != r["distortion"][1]  # two learning rates, two different models
    assert all(0 < d < 1 for d in r["distortion"])
    # a second call is a cache hit, not a retrain
    assert ex.train_architecture(acfg, "cpu", ResultCache(tmp_path)) == r


class _Interrupt(Exception):
    pass


class _StopAfterFirstCheckpoint(ResultCache):
    def put_checkpoint(self, key, state):
        super().put_checkpoint(key, state)
        raise _Interrupt


@pytest.mark.parametrize("kind,size", [("categorical", (4, 2)), ("continuous", 1)])
def test_interrupted_training_resumes_to_the_same_result(fake_data, tmp_path, kind, size):
    acfg = ex.arch_config(TRAIN, kind, size)
    ref = ex.train_architecture(acfg, "cpu", ResultCache(tmp_path / "ref"))
    with pytest.raises(_Interrupt):
        ex.train_architecture(acfg, "cpu", _StopAfterFirstCheckpoint(tmp_path / "run"))
    cache = ResultCache(tmp_path / "run")
    key = config_key("distortion-ae", acfg)
    assert cache.get(key) is None and cache.get_checkpoint(key)["state"]["epoch"] == 1
    res = ex.train_architecture(acfg, "cpu", cache)
    assert res["distortion"] == ref["distortion"]
    assert res["loss"] == ref["loss"] and res["curve"] == ref["curve"]
    assert cache.get_checkpoint(key) is None  # the finished result replaces the checkpoint


def _ctx(tmp_path, profile="smoke"):
    return Context(profile, [0], torch.device("cpu"), ResultCache(tmp_path))


def test_worker_entry_point_is_picklable_and_fills_the_cache(fake_data, tmp_path):
    acfg = ex.arch_config(TRAIN, "continuous", 1)
    pickle.loads(pickle.dumps((ex._worker, acfg, "cpu", str(tmp_path), 1)))  # what the spawned pool sends
    ex._worker(acfg, "cpu", str(tmp_path), 1)
    assert ResultCache(tmp_path).get(config_key("distortion-ae", acfg)) is not None


@pytest.mark.skipif(not (os.environ.get("RECOLLECT_DATA") and os.environ.get("RECOLLECT_SLOW_TESTS")),
                    reason="spawns processes (~20 s): set RECOLLECT_SLOW_TESTS=1 and RECOLLECT_DATA")
def test_worker_processes_give_the_same_results(tmp_path):
    train = dict(TRAIN, n_train=64, epochs=1)
    acfgs = [ex.arch_config(train, "categorical", (4, 2)), ex.arch_config(train, "continuous", 1)]
    one = ex._train_all(_ctx(tmp_path / "a"), acfgs, workers=1)
    two = ex._train_all(_ctx(tmp_path / "b"), acfgs, workers=2)
    for a, b in zip(one, two):
        assert a["distortion"] == b["distortion"] and a["loss"] == b["loss"]


# ---------------------------------------------------------------------------------------------- tables
def _t5(rows):
    """A Table 5 frame as run_table5 returns it, from {(c, l): {lr: distortion}}."""
    labels = ex._table5_labels(list(rows))
    results = [dict(lrs=list(v), distortion=list(v.values()), loss=[[0.5] * len(v)], curve=[[0.2] * len(v)],
                    params=1, seconds=1.0) for v in rows.values()]
    return ex._results_frame(results, labels)


def test_best_learning_rate_is_kept_and_rows_carry_the_paper():
    t5 = _t5({(6, 2): {1e-2: 0.2, 1e-3: 0.1}, (38, 2): {1e-2: 0.05, 1e-3: float("nan")}})
    rows = ex.table5_rows(t5)
    assert [(r["c"], r["l"], r["best lr"], r["ours"]) for r in rows] == [(6, 2, "1e-03", 0.1), (38, 2, "1e-02", 0.05)]
    assert rows[0]["paper"] == paper.TABLE5[(6, 2)][1] and rows[0]["compression"] == paper.TABLE5[(6, 2)][0]
    curves = ex.training_curves(t5)
    assert set(curves.columns) >= {"c", "l", "lr", "epoch", "train_loss", "curve_distortion"}


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


def test_claims_follow_the_numbers():
    by_rho = ex.budget_search(fractions=(0.02,), rhos=(1.0, 0.5), n_examples=50_000)
    by_n = ex.budget_search(fractions=0.1, rhos=0.1, n_examples=[1_000, 100_000])

    def t6(d):
        labels = [dict(h=h, floats=4 * h, bits=128 * h, compression=49 / h) for h in d]
        res = [dict(lrs=[1e-3], distortion=[v], loss=[[0.5]], curve=[[0.2]], params=1, seconds=1.0) for v in d.values()]
        return ex._results_frame(res, labels)

    t5 = _t5({(6, 2): {1e-3: 0.14}, (38, 2): {1e-3: 0.06}, (168, 2): {1e-3: 0.02}})
    good = dict((c, h) for c, h, _ in ex.claims(t5, t6({1: 0.13, 20: 0.015}), by_rho, by_n))
    assert good[next(k for k in good if k.startswith("Categorical"))] is True
    assert good[next(k for k in good if "capacity C_ve" in k)] is True
    bad = dict((c, h) for c, h, _ in ex.claims(t5, t6({1: 0.01}), by_rho, by_n))
    assert bad[next(k for k in bad if k.startswith("Categorical"))] is False
    assert all(good[k] for k in good if "eq" in k.lower() or "rho" in k)
