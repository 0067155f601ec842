"""Results as data (recollect.results) and experiments as items (recollect.experiments.items)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from recollect import report
from recollect import results as R
from recollect.experiments import items as I


def _payload():
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, float("nan")], "c": ["x", "y"], "d": [True, False]})
    df.attrs["curves"] = pd.DataFrame({"e": [1.0, 2.0]})
    return {"table": df, "w": torch.arange(6, dtype=torch.float32).view(2, 3), "codes": np.arange(4, dtype=np.uint8),
            "n": 3, "f": 0.1, "inf": float("inf"), "nested": {"l": [1, [2.5, None]]}, "s": "text"}


def test_encode_decode_roundtrip_is_exact_and_json_is_standard():
    arrays = {}
    body = R.encode(_payload(), arrays)
    json.dumps(body, allow_nan=False)  # standard JSON: NaN / inf are written as strings
    out = R.decode(body, arrays)
    p = _payload()
    pd.testing.assert_frame_equal(out["table"], p["table"])
    pd.testing.assert_frame_equal(out["table"].attrs["curves"], p["table"].attrs["curves"])
    assert torch.equal(out["w"], p["w"]) and out["w"].dtype == torch.float32
    assert np.array_equal(out["codes"], p["codes"]) and out["codes"].dtype == np.uint8
    assert out["inf"] == float("inf") and out["nested"] == {"l": [1, [2.5, None]]} and out["s"] == "text"


def test_fingerprint_sees_every_number_and_array():
    p = _payload()
    f = R.fingerprint(p)
    assert f == R.fingerprint(_payload())
    q = _payload()
    q["w"][0, 0] += 1e-7
    assert R.fingerprint(q) != f
    q = _payload()
    q["table"].loc[0, "b"] = 0.5000001
    assert R.fingerprint(q) != f


def test_unstorable_values_are_clear_errors():
    with pytest.raises(TypeError, match="cannot store a object"):
        R.encode({"x": object()}, {})
    with pytest.raises(TypeError, match="strings"):
        R.encode({1: 2}, {})


def test_result_files_roundtrip_and_store(tmp_path):
    store = R.ResultStore(tmp_path)
    res = R.Result("ch/it", "paper", {"epochs": 3}, "v1", {"seconds": 1.5}, _payload())
    written = store.put(res)
    assert [p.suffix for p in written] == [".npz", ".json"]  # the JSON last: complete once it is there
    got = store.get("ch/it", {"epochs": 3}, "v1")
    assert got is not None and not got.stale and torch.equal(got.payload["w"], res.payload["w"])
    assert store.get("ch/it", {"epochs": 4}, "v1") is None          # another config is another result
    assert store.get("ch/it", {"epochs": 3}, "v2").stale            # another version: stale, not dropped
    assert store.items() == ["ch/it"]
    with pytest.raises(ValueError, match="<chapter>/<name>"):
        store.paths("noslash")


def test_too_large_arrays_are_refused_with_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "MAX_NPZ_BYTES", 100)
    res = R.Result("ch/big", "paper", {}, "v", {}, {"w": np.random.default_rng(0).random(1000)})
    with pytest.raises(ValueError, match="MiB"):
        R.ResultStore(tmp_path).put(res)
    assert not (tmp_path / "ch").exists() or not any((tmp_path / "ch").iterdir())


# ------------------------------------------------------------------------------------------------
# items with a toy chapter
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Cfg:
    n: int = 100
    seed: int = 0

    def smoke(self):
        return dataclasses.replace(self, n=3)

    def probe(self):
        return dataclasses.replace(self, n=2)


CALLS = []


def _run_base(job):
    CALLS.append(("base", job.profile))
    return {"x": torch.arange(job.cfg.n)}


def _run_top(job):
    CALLS.append(("top", job.profile))
    return {"sum": float(job.dep("base")["x"].sum()) + job.cfg.seed}


def _cfg(p):
    return _Cfg() if p == "paper" else _Cfg().smoke()


BASE = I.register(I.Item("zz-toy", "base", "toy base", _cfg, _run_base, lambda c: [I.Loop("l", c.n)]))
TOP = I.register(I.Item("zz-toy", "top", "toy top", _cfg, _run_top, lambda c: [I.Loop("l", c.n)], depends=("base",)))


def test_run_item_runs_dependencies_once_and_stores(tmp_path):
    CALLS.clear()
    store = R.ResultStore(tmp_path)
    res = I.run_item(TOP, "smoke", "cpu", store)
    assert res.payload["sum"] == 3.0 and CALLS == [("base", "smoke"), ("top", "smoke")]
    assert store.read("zz-toy/base") is not None and store.read("zz-toy/top") is not None
    CALLS.clear()
    I.run_item(TOP, "smoke", "cpu", store)  # the dependency is taken from the store
    assert CALLS == [("top", "smoke")]
    assert res.version == R.fingerprint(res.payload)


def test_probe_stores_nothing_and_uses_the_probe_config(tmp_path):
    CALLS.clear()
    res = I.run_item(TOP, "probe", "cpu", None)
    assert res.payload["sum"] == 1.0 and res.version == "probe" and CALLS == [("base", "probe"), ("top", "probe")]


def test_missing_passes_through_every_decorated_function():
    m = I.Missing(["zz-toy/top"])
    assert report.table(report.compare(m, 1.0)) is m
    assert "not yet made at the paper profile" in repr(m) and "gpu-queue" in repr(m)
    assert "Not available" in m._repr_html_()
    assert not m


def test_paper_profile_reads_results_only(tmp_path, monkeypatch):
    """At the paper profile a chapter never runs an item: absent or stale results are Missing."""
    from recollect.experiments import context

    monkeypatch.setenv("RECOLLECT_RESULTS", str(tmp_path))
    monkeypatch.setattr(I, "current_version", lambda item: "v-now")
    CALLS.clear()  # each rendering (a context) reads a result once: a new context after each change
    got = I.result(context("paper", device="cpu"), "zz-toy/top")
    assert isinstance(got, I.Missing) and got.why == "missing" and CALLS == []
    R.ResultStore(tmp_path).put(R.Result("zz-toy/top", "paper", TOP.config_dict("paper"), "v-old", {}, {"sum": 1.0}))
    ctx = context("paper", device="cpu")
    got = I.result(ctx, "zz-toy/top")
    assert isinstance(got, I.Missing) and got.why == "stale"
    assert I.result(ctx, "zz-toy/top").why == "stale"  # asked again in the same rendering: still stale
    R.ResultStore(tmp_path).put(R.Result("zz-toy/top", "paper", TOP.config_dict("paper"), "v-now", {}, {"sum": 2.0}))
    assert I.result(context("paper", device="cpu"), "zz-toy/top") == {"sum": 2.0} and CALLS == []


def test_every_registered_chapter_item_is_well_formed():
    reg = I.registry()
    assert reg, "no items registered"
    for key, it in reg.items():
        if it.chapter == "zz-toy":
            continue
        paper, smoke, probe = it.cfg("paper"), it.cfg("smoke"), it.cfg("probe")
        assert dataclasses.is_dataclass(paper) and paper.__dataclass_params__.frozen, key
        assert I._as_dict(smoke) != I._as_dict(paper) or not it.gpu, f"{key}: smoke config equals the paper's"
        loops = it.loops(paper)
        assert loops or not it.gpu, f"{key}: a GPU item must say what it runs"  # a CPU item may run nothing
        assert all(l.steps >= 1 for l in loops), key
        for d in I._dep_keys(it):
            assert d in reg, f"{key} depends on unknown {d}"
        if it.versioned_by is not None:
            twin = reg[I._dep_keys(dataclasses.replace(it, depends=(it.versioned_by,)))[0]]
            assert twin.versioned_by is None, f"{key}: its twin must be run at smoke"


def test_overview_is_generated_from_the_results_folder(tmp_path, monkeypatch):
    """The overview page shows a paper result's number and verdict, and the chapter's state."""
    import shutil

    from recollect import overview

    monkeypatch.setenv("RECOLLECT_RESULTS", str(tmp_path))
    shutil.copytree(R.ROOT / "results" / I.SMOKE_DIR, tmp_path / I.SMOKE_DIR)
    page = overview.render()
    assert "Distortion versus compression" in page and "smoke only" in page
    it = I.get_item("distortion/ae-categorical-6-2")
    payload = {"lrs": [0.01, 0.001, 0.0001, 1e-05], "distortion": [0.13912, 0.2, 0.3, 0.4], "loss": [[1, 1, 1, 1]],
               "curve": [[1, 1, 1, 1]], "params": 1066}
    R.ResultStore(tmp_path).put(R.Result(it.key, "paper", it.config_dict("paper"), I.current_version(it),
                                         {"device": "NVIDIA H200", "gpu": "NVIDIA H200", "seconds": 60.0,
                                          "date": "2026-12-01T00:00:00Z"}, payload))
    page = overview.render()
    assert "paper profile (partial)" in page and "NVIDIA H200" in page
    assert "0.13912" in page and "agrees" in page  # paper 0.13831, band 0.01


def test_overview_has_every_chapters_comparisons(tmp_path, monkeypatch):
    """Every chapter gives the overview its comparison tables (not "no comparison tables yet"): with
    no paper result each is a Missing naming its items; with the committed results each made one is a
    table with a verdict per row."""
    import shutil

    from recollect import overview

    assert set(overview.TITLES) == set(overview.TABLES) == set(I.CHAPTER_MODULES)
    for chapter in overview.TITLES:
        tables = overview.chapter_tables(chapter)
        assert tables, f"{chapter}: no comparison tables in the overview"
        for title, t in tables:
            if isinstance(t, I.Missing):
                assert t.items and all(k.startswith(chapter + "/") for k in t.items), (chapter, title)
            else:
                assert "verdict" in t.numbers.columns and len(t.numbers), (chapter, title)
    monkeypatch.setenv("RECOLLECT_RESULTS", str(tmp_path))
    shutil.copytree(R.ROOT / "results" / I.SMOKE_DIR, tmp_path / I.SMOKE_DIR)
    for chapter in ("distill-mnist", "distill-omniglot", "lifelong-cifar100"):
        tables = overview.chapter_tables(chapter)
        assert any(isinstance(t, I.Missing) for _, t in tables), chapter
    assert "no comparison tables" not in overview.render()
