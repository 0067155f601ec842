"""The results machinery end to end, on a CPU: the budgeted queue over smoke-sized items (a queue
*rehearsal*: the paper profile runs the smoke configs), killed in the middle of an item and run again
until complete; the results unpacked into a results folder; the chapter then rendered at the paper
profile from that folder with no dataset and no network, so it cannot have trained."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from recollect import portable
from recollect import results as R
from recollect.experiments import items as I
from recollect.queue import compare_numbers, pack, todo

ROOT = pathlib.Path(__file__).resolve().parent.parent
ITEMS = ["distortion/ae-categorical-6-2", "distortion/ae-categorical-20-2", "distortion/jpeg"]


def _env(tmp: pathlib.Path, **extra) -> dict:
    env = portable.environment()
    env.update(RECOLLECT_RESULTS=str(tmp / "results"), RECOLLECT_REHEARSAL="1", RECOLLECT_CACHE=str(tmp / "cache"),
               PYTHONPATH=str(ROOT), HOME=str(tmp / "home"), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _queue(tmp, env, budget=600, out="out"):
    cmd = [sys.executable, "-m", "recollect", "gpu-queue", "--budget", str(budget), "--out", str(tmp / out),
           "--device", "cpu", "--cpu-items", "--item", *ITEMS]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _log(tmp, out="out") -> dict:
    p = tmp / out / "queue-log.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture()
def tmp(tmp_path):
    (tmp_path / "results").mkdir()
    shutil.copytree(R.results_dir() / I.SMOKE_DIR, tmp_path / "results" / I.SMOKE_DIR)
    return tmp_path


def test_queue_killed_mid_item_resumes_completes_and_the_chapter_renders_without_training(tmp):
    env = _env(tmp)
    # 1. start, wait until the first item is done and the second is running, kill it hard
    p = _queue(tmp, env)
    deadline = time.time() + 600
    while time.time() < deadline:
        doc = _log(tmp)
        running = [l for l in doc.get("lines", []) if " run " in l]
        if len(doc.get("done", [])) == 1 and len(running) == 2:
            break
        if p.poll() is not None:
            pytest.fail(f"the queue ended before it could be killed:\n{p.stdout.read()[-4000:]}")
        time.sleep(0.1)
    else:
        p.kill()
        pytest.fail("the queue never reached its second item")
    p.send_signal(signal.SIGKILL)
    p.wait()
    packs = sorted((tmp / "out").glob("results-*.tar"))
    assert packs, "the finished item must already be packed when the command is killed"
    with tarfile.open(packs[0]) as t:
        names = t.getnames()
    first = _log(tmp)
    done_first = [d["item"] for d in first["done"]]
    assert len(done_first) == 1 and done_first[0] in ITEMS
    assert {n.rsplit(".", 1)[0] for n in names} == {done_first[0]}, names
    assert first["preflight"] and all(v["ok"] for v in first["preflight"].values()), first["preflight"]

    assert not (tmp / "out" / "results").exists(), "only the packs go to OUT: nothing comes back twice"

    # 2. the same command again (the session's next call, a fresh OUT): the finished item is not
    # redone (the machine-local session results hold it), the others complete
    p = _queue(tmp, env, out="out2")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-4000:]
    second = _log(tmp, "out2")
    assert sorted(d["item"] for d in second["done"]) == sorted(set(ITEMS) - set(done_first)), out[-3000:]
    assert (tmp / "out2" / "rates.json").exists()

    # 3. unpack what both calls brought back into the results folder: the items are now done there
    for folder in ("out", "out2"):
        r = subprocess.run([sys.executable, "-m", "recollect", "unpack", str(tmp / folder)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    store = R.ResultStore(tmp / "results")
    for k in ITEMS:
        got = store.read(k)
        assert got is not None and got.profile == "paper" and got.provenance["seconds"] > 0
    # 4. render the chapter at the paper profile: no dataset, no network, so it cannot train
    empty = tmp / "no-data"
    empty.mkdir()
    nb_out = tmp / "distortion-paper.ipynb"
    render = env | {"RECOLLECT_DATA": str(empty), "RECOLLECT_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "papermill", "--cwd", str(ROOT / "book"), "-k", "python3",
                        "-p", "profile", "paper", "-p", "device", "cpu", str(ROOT / "book" / "01-distortion.ipynb"),
                        str(nb_out)], env=render, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    nb = json.loads(nb_out.read_text())
    text = "\n".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                     for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "paper profile, partly missing or stale" in text.lower() and "ae-categorical-392-3" in text
    best = min(store.read("distortion/ae-categorical-6-2").payload["distortion"])
    assert f"{best:.4f}" in text  # Table 5's (6, 2) row, rendered from the results folder
    assert "Traceback" not in text


def test_an_item_of_another_config_or_version_is_not_current(tmp, monkeypatch):
    monkeypatch.setenv("RECOLLECT_RESULTS", str(tmp / "results"))
    it = I.get_item("distortion/jpeg")
    store = R.ResultStore(tmp / "results")
    version = I.current_version(it)
    res = R.Result(it.key, "paper", it.config_dict("paper"), version, {"seconds": 1.0}, {"table": [1, 2]})
    store.put(res)
    assert store.get(it.key, it.config_dict("paper"), version).stale is False
    assert store.get(it.key, it.config_dict("paper"), "another-version").stale is True
    assert store.get(it.key, it.config_dict("smoke"), version) is None  # another config: not this result
    assert it.key not in [i.key for i in todo(store, stages=None, chapters=["distortion"], gpu=False)]
    store.put(R.Result(it.key, "paper", it.config_dict("paper"), "old", {"seconds": 1.0}, {"table": [1]}))
    assert it.key in [i.key for i in todo(store, stages=None, chapters=["distortion"], gpu=False)]  # stale: again


def test_items_are_ordered_dependencies_first_and_estimated():
    items = todo(R.ResultStore("/nonexistent"), stages=("first",))
    keys = [i.key for i in items]
    for i, it in enumerate(items):
        for d in I._dep_keys(it):
            assert d in keys[:i], f"{it.key} comes before its dependency {d}"


def test_named_items_are_made_whatever_their_stage_and_unknown_names_fail():
    store = R.ResultStore("/nonexistent")
    beyond = [it for it in I.registry().values() if it.stage == "beyond"][0]
    assert beyond.key not in [i.key for i in todo(store, stages=("first",))]
    assert beyond.key in [i.key for i in todo(store, stages=("first",), names=[beyond.key])]
    cpu = [it for it in I.registry().values() if not it.gpu][0]
    assert cpu.key in [i.key for i in todo(store, stages=("first",), names=[cpu.key], gpu=True)]
    with pytest.raises(ValueError, match="no-such-item"):
        todo(store, stages=("first",), names=["distortion/no-such-item"])


def test_a_smoke_only_item_is_never_queued_planned_or_listed_at_the_paper_profile():
    """The distortion chapter's smoke loss row (6, 2)-kl is the KL items' smoke twin; no paper table
    reads it, so the queue, the plan, the dry run and the status box leave it out."""
    from recollect import plan as P

    key = "distortion/ae-categorical-6-2-kl"
    assert key in I.registry() and key not in I.paper_items()
    store = R.ResultStore("/nonexistent")
    assert key not in [i.key for i in todo(store, stages=("first", "seeds", "beyond"))]
    with pytest.raises(ValueError, match="6-2-kl: an item of the smoke profile only"):
        todo(store, names=[key])
    assert key not in [r["item"] for r in I.item_states("distortion")]
    assert "ae-categorical-6-2-kl" not in set(P.plan_table(["distortion"]).item)
    # the paper's own KL rows stay, and the smoke profile still fingerprints the twin
    assert "distortion/ae-categorical-38-2-kl" in I.paper_items()
    assert I.smoke_record(I.get_item(key)) is not None


def test_every_training_item_longer_than_a_minute_is_resumable():
    """A GPU command runs at most 10 minutes: an item that may not finish in one must stop before the
    deadline and continue (``Job.boundary``). Only the two short checks are exempt."""
    short = {"distortion/bf16-check", "distortion/baselines"}
    items = [it for it in I.registry().values() if it.chapter in I.CHAPTER_MODULES]  # not the tests' toy items
    assert sorted(it.key for it in items if it.gpu and not it.resumable) == sorted(short)


def test_a_growing_loop_is_extrapolated_from_the_probe_s_tasks():
    """GEM's step at task t >= 1 costs about a + b t: its later steps cost c2 + growth (c2 - c1), growth
    their mean t beyond the probe's third task; the later steps of a run that does not grow cost what
    its second task's did."""
    from recollect.queue import cpu_seconds, estimate_seconds

    def counts_of(it, per):
        return {it.key: {"probe_config": R.config_hash(I._as_dict(it.cfg("probe"))),
                         "loops": {n: {"seconds_per_step": v, "flops_per_step": 0.0, "launches_per_step": 1.0}
                                   for n, v in per.items()}}}

    it = I.get_item("lifelong-cifar100/coarse-gem-s0")
    loops = {l.name: l for l in it.loops(it.cfg("paper"))}
    per = {"lifelong": 0.1, "lifelong-2nd": 0.3, "lifelong-later": 0.35, "eval": 0.01}
    later = loops["lifelong-later"]
    want = (loops["lifelong"].steps * 0.1 + loops["lifelong-2nd"].steps * 0.3
            + later.steps * (0.35 + later.growth * 0.05) + loops["eval"].steps * 0.01)
    counts = counts_of(it, per)
    assert cpu_seconds(it, counts) == pytest.approx(want)
    rates = {it.key: {"probe_config": counts[it.key]["probe_config"],
                      "loops": {n: {"seconds_per_step": v} for n, v in per.items()}}}
    sec, how = estimate_seconds(it, rates)
    assert sec == pytest.approx(want) and how.startswith("measured")
    # a measured later step cheaper than the second task's (noise) never shrinks it
    assert I.step_cost(later, {"lifelong-2nd": 0.5, "lifelong-later": 0.3}.__getitem__) == 0.3
    # without a rate it reads, the estimate is not made from half the facts
    del rates[it.key]["loops"]["lifelong-2nd"]
    assert estimate_seconds(it, rates)[0] is None
    # a fused run: its probe has no third task, the later tasks cost the second's
    f = I.get_item("lifelong-cifar100/coarse-fused-s0")
    fl = {l.name: l for l in f.loops(f.cfg("paper"))}
    per = {"lifelong": 0.2, "lifelong-2nd": 0.1, "eval": 0.01}
    want = fl["lifelong"].steps * 0.2 + (fl["lifelong-2nd"].steps + fl["lifelong-later"].steps) * 0.1 + 2.1
    assert cpu_seconds(f, counts_of(f, per)) == pytest.approx(want)


def test_a_growing_loop_on_the_cpu_is_extrapolated_in_its_counted_flops():
    """Where the probe counted FLOPs, the CPU estimate of a growing loop follows them (exact) instead
    of the difference of two timed tasks (a few steps each: noise); each loop keeps its own measured
    seconds per FLOP. A smaller later count (noise cannot make one, but a stale count could) never
    shrinks the step."""
    from recollect.queue import cpu_seconds

    it = I.get_item("lifelong-cifar100/coarse-gem-s0")
    loops = {l.name: l for l in it.loops(it.cfg("paper"))}
    later = loops["lifelong-later"]
    per = {"lifelong": (0.1, 3e9), "lifelong-2nd": (0.3, 6e9), "lifelong-later": (0.31, 9e9), "eval": (0.01, 1e9)}
    counts = {it.key: {"probe_config": R.config_hash(I._as_dict(it.cfg("probe"))),
                       "loops": {n: {"seconds_per_step": v, "flops_per_step": f, "launches_per_step": 1.0}
                                 for n, (v, f) in per.items()}}}
    want = (loops["lifelong"].steps * 0.1 + loops["lifelong-2nd"].steps * 0.3
            + later.steps * 0.31 * (9e9 + later.growth * 3e9) / 9e9 + loops["eval"].steps * 0.01)
    assert cpu_seconds(it, counts) == pytest.approx(want)
    # the timed difference alone (0.01 s per task) would have costed the later tasks at a fraction
    timed = later.steps * (0.31 + later.growth * 0.01)
    assert later.steps * 0.31 * (1 + later.growth / 3) > 2 * timed
    counts[it.key]["loops"]["lifelong-later"]["flops_per_step"] = 5e9
    assert I.step_cost(later, lambda n: per[n][0], flops=lambda n: per[n][1] if n != "lifelong-later" else 5e9) == 0.31


def test_a_loop_larger_than_its_probe_step_is_costed_by_its_arithmetic():
    """The classical codecs' k-means: the probe's counted step assigns 1,024 images to a codebook of 2;
    a real iteration assigns 50,000 images to codebooks up to 2^15. Its loop's ``work`` makes the
    estimates (GPU and CPU) pay the real arithmetic instead of the probe step's (0.0 CPU-minutes and
    0.01 H200-minutes before), and without the counted FLOPs there is no estimate at all."""
    from recollect.experiments import distortion as D
    from recollect.queue import FLOP_RATE, cpu_seconds, estimate_seconds

    it = I.get_item("distortion/baselines")
    cfg, probe = it.cfg("paper"), it.cfg("probe")
    loops = {l.name: l for l in it.loops(cfg)}
    km = loops["kmeans"]
    d = 28 * 28
    probe_step = 2 * probe.n_train * 2 * d                # the counted step's distances: 2 N K D at K = 2
    bits = [b for b in range(1, 40) if 2 ** b < cfg.n_train]
    real = sum(cfg.kmeans_iters * 2 * cfg.n_train * 2 ** b * d for b in bits)
    assert km.steps == len(bits) * cfg.kmeans_iters
    assert km.steps * km.work * probe_step == pytest.approx(real)
    assert loops["codecs"].work == pytest.approx(cfg.n_train / probe.n_train)
    # the probe counts every codec it evaluates, the k-means codebooks too
    assert {l.name: l.steps for l in it.loops(probe)}["codecs"] == \
        sum(len(v) for g in probe.grid().values() for v in g.values()) + len([b for b in bits if 2 ** b < probe.n_train])

    chash = R.config_hash(I._as_dict(probe))
    per = {"kmeans": (0.002, probe_step), "codecs": (0.007, 1e7)}
    counts = {it.key: {"probe_config": chash, "flop_rate": 1e11,
                       "loops": {n: {"seconds_per_step": s, "flops_per_step": f, "launches_per_step": 20.0}
                                 for n, (s, f) in per.items()}}}
    want_cpu = sum(l.steps * max(per[n][0], l.work * per[n][1] / 1e11) for n, l in loops.items())
    assert cpu_seconds(it, counts) == pytest.approx(want_cpu)
    assert cpu_seconds(it, counts) > 10 * 60 > sum(l.steps * per[n][0] for n, l in loops.items())
    sec, how = estimate_seconds(it, None, counts)
    assert how.startswith("counted") and sec == pytest.approx(sum(
        l.steps * max(20 * 30e-6, l.work * per[n][1] / FLOP_RATE) for n, l in loops.items()))
    # a GPU's measured probe steps: the real arithmetic still bounds them from below
    rates = {it.key: {"probe_config": chash, "loops": {n: {"seconds_per_step": 1e-4} for n in per}}}
    sec_m, how_m = estimate_seconds(it, rates, counts)
    assert how_m.startswith("measured") and sec_m == pytest.approx(sum(
        l.steps * max(1e-4, l.work * per[n][1] / FLOP_RATE) for n, l in loops.items()))
    # without the counted FLOPs (or the counting CPU's rate) no estimate is made from the probe step alone
    assert estimate_seconds(it, rates, None) == (None, "not counted yet: `python -m recollect plan --count`")
    del counts[it.key]["flop_rate"]
    assert cpu_seconds(it, counts) is None
    with pytest.raises(ValueError, match="arithmetic"):
        I.step_cost(km, lambda n: 0.002)
    with pytest.raises(ValueError, match="work must be"):
        I.Loop("x", 3, work=0)


def test_the_counting_cpu_s_matmul_rate_is_measured():
    from recollect.queue import matmul_flop_rate

    assert 1e8 < matmul_flop_rate(n=256, repeats=2) < 1e15


def test_compare_numbers_tolerates_small_and_reports_large_differences():
    ref = {"a": [1.0, 2.0], "b": {"c": 10.0, "d": "x"}}
    assert compare_numbers({"a": [1.01, 2.0], "b": {"c": 10.2, "d": "x"}}, ref) == []
    diffs = compare_numbers({"a": [1.0, 3.0], "b": {"c": 10.0, "d": "y"}}, ref)
    assert len(diffs) == 2 and "/a/1" in diffs[0] and "/b/d" in diffs[1]


def test_smoke_differences_are_told_apart_by_kind():
    """Numbers beyond the tolerance are values; NaN where the CPU had a number, a missing key,
    another length or string are differences in kind (the preflight stops an item only for these)."""
    from recollect.queue import _differences

    ref = {"a": [1.0, 2.0], "b": {"c": 10.0, "d": "x"}, "e": [1, 2], "f": "NaN"}
    kinds = lambda ours: sorted(k for k, _ in _differences(ours, ref, 0.1, 0.05, ""))  # noqa: E731
    assert kinds({"a": [1.01, 2.0], "b": {"c": 10.2, "d": "x"}, "e": [1, 2], "f": "NaN"}) == []
    assert kinds({"a": [1.0, 3.0], "b": {"c": 10.0, "d": "x"}, "e": [1, 2], "f": 0.5}) == ["number", "number"]
    assert kinds({"a": [1.0, "NaN"], "b": {"c": float("inf"), "d": "x"}, "e": [1, 2], "f": "NaN"}) == \
        ["nonfinite", "nonfinite"]
    assert kinds({"a": [1.0], "b": {"d": "y"}, "e": [1, "2"], "f": "NaN"}) == ["structure"] * 4


def test_the_preflight_stops_an_item_for_a_smoke_run_that_differs_in_kind_not_in_value(tmp, monkeypatch):
    """A GPU draws other random numbers than the CPU, so smoke numbers may move; only a failed run,
    a NaN or another structure stops the item."""
    import copy

    from recollect.queue import preflight

    monkeypatch.setenv("RECOLLECT_RESULTS", str(tmp / "results"))
    monkeypatch.setenv("RECOLLECT_REHEARSAL", "1")
    monkeypatch.setenv("RECOLLECT_CACHE", str(tmp / "cache"))
    it = I.get_item(ITEMS[0])
    real = I.smoke_record(it)

    def shifted(item):
        rec = copy.deepcopy(real)
        rec["payload"]["distortion"] = [v * 2 + 1 for v in rec["payload"]["distortion"]]
        return rec

    lines = []
    monkeypatch.setattr(I, "smoke_record", shifted)
    rec = preflight([it], "cpu", lines.append)[it.key]
    assert rec["ok"] and rec["smoke_check"]["numbers"] >= 4 and not rec["smoke_check"]["blocking"]
    assert any(l.startswith(f"note: {it.key} at smoke on ") and "not a reason to skip" in l for l in lines)

    def another_kind(item):
        rec = copy.deepcopy(real)
        rec["payload"]["distortion"] = rec["payload"]["distortion"][:-1]
        return rec

    monkeypatch.setattr(I, "smoke_record", another_kind)
    rec = preflight([it], "cpu", lines.append)[it.key]
    assert not rec["ok"] and "differs from the committed CPU run in kind" in rec["error"] and "entries against" in rec["error"]


def test_pack_splits_into_files_under_the_limit(tmp_path, monkeypatch):
    import recollect.queue as Q

    monkeypatch.setattr(Q, "PACK_LIMIT", 3000)
    src = tmp_path / "results" / "ch"
    src.mkdir(parents=True)
    for i in range(4):
        (src / f"i{i}.json").write_bytes(b"x" * 1500)
    out = pack(tmp_path / "results", tmp_path)
    assert len(out) == 4 and all(p.stat().st_size < 3000 + 10240 for p in out)
    got = set()
    for p in out:
        with tarfile.open(p) as t:
            got |= set(t.getnames())
    assert got == {f"ch/i{i}.json" for i in range(4)}
    # one more file than MAX_PACKS packs can bring back (64 MiB together): a clear error, the packs kept
    (src / "i4.json").write_bytes(b"x" * 1500)
    with pytest.raises(RuntimeError, match="at most 4 come back"):
        pack(tmp_path / "results", tmp_path)
    assert sorted(tmp_path.glob("results-*.tar")) == out


def test_cifar100_travels_as_webp_parts_and_is_rebuilt_exactly(tmp_path):
    """The staging of a GPU session: CIFAR-100 in two lossless parts, rebuilt and checked by sha256."""
    import numpy as np

    from recollect.stage import join_cifar100, split_cifar100

    rng = np.random.default_rng(0)
    n_train, n_test = 7, 3
    arrays = {"train_x": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
              "train_fine": rng.integers(0, 100, n_train).astype(np.uint8),
              "train_coarse": rng.integers(0, 20, n_train).astype(np.uint8),
              "test_x": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
              "test_fine": np.arange(n_test, dtype=np.uint8), "test_coarse": np.arange(n_test, dtype=np.uint8),
              "fine_names": np.array(["a"] * 100), "coarse_names": np.array(["b"] * 20),
              "official_split": np.array(True)}
    src = tmp_path / "cifar100.npz"
    np.savez_compressed(src, **arrays)
    parts = split_cifar100(src, tmp_path / "parts", cut=4)
    assert [p.name for p in parts] == ["cifar100.part1.npz", "cifar100.part2.npz"]
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "cifar100.part1.npz").write_bytes(parts[0].read_bytes())
    with pytest.raises(ValueError, match="cifar100.part2.npz not in"):
        join_cifar100(tmp_path / "half")
    out = join_cifar100(tmp_path / "parts")
    with np.load(out) as z:
        for k, v in arrays.items():
            assert np.array_equal(z[k], v), k


def test_device_commands_are_short_rerunnable_and_name_no_machine_path():
    """Each staged call's command fits the device tool (2,000 characters), copies over what an earlier
    try left (read-only data files), checks the sums, rebuilds CIFAR-100 only where its second part
    arrives, and names no absolute path of a particular machine."""
    from recollect.stage import commands
    calls = [[pathlib.Path("mnist.npz")], [pathlib.Path("cifar100.part1.npz")], [pathlib.Path("cifar100.part2.npz")]]
    cmds = commands("abc123", calls, [200, 200, 200], [["distortion"], [], ["lifelong-cifar100"]], ["first"])
    assert len(cmds) == 3
    for i, c in enumerate(cmds, 1):
        assert len(c) <= 2000
        assert f"cp -f .stage/{i}/*" in c and f"sha256sum -c --quiet SHA256SUMS.{i}" in c
        assert "gpu-queue --out $OUT --stage first --budget 200" in c
        assert "/root" not in c and "/work" not in c and "/home" not in c
    assert ["join-data" in c for c in cmds] == [False, False, True]
    assert "--chapter distortion" in cmds[0] and "--chapter" not in cmds[1]
    assert not any("bench/speed.py" in c for c in cmds)
    # until bench/results.md exists, the first call runs the benchmark first, bounded, never blocking the queue
    with_bench = commands("abc123", calls, [200, 200, 200], [["distortion"], [], ["lifelong-cifar100"]], ["first"],
                          bench=120)
    assert with_bench[1:] == cmds[1:] and len(with_bench[0]) <= 2000
    assert "(timeout 120 python3 bench/speed.py --steps 100 --out $OUT/bench.md || true) && python3 -m recollect gpu-queue" in with_bench[0]


def test_checkpoint_files_are_the_items_own(tmp_path):
    """Finishing ``gem-50`` must not delete (nor the queue count as started) ``gem-50-adam``'s checkpoint."""
    from recollect.experiments import items as I
    d = tmp_path / "lifelong-omniglot"
    d.mkdir()
    own = [d / "gem-50-0123456789abcdef.ckpt", d / "gem-50-fedcba9876543210.ckpt"]
    other = d / "gem-50-adam-0123456789abcdef.ckpt"
    for p in own + [other]:
        p.write_bytes(b"x")
    assert I.checkpoint_files(tmp_path, I.get_item("lifelong-omniglot/gem-50")) == own
    assert I.checkpoint_files(tmp_path, I.get_item("lifelong-omniglot/gem-50-adam")) == [other]
    assert I.checkpoint_files(tmp_path / "nowhere", I.get_item("lifelong-omniglot/gem-50")) == []


def test_a_smoke_result_cached_by_other_code_is_made_again(tmp_path, monkeypatch):
    """The smoke cache answers only for the code that made a result: otherwise its fingerprint check
    would compare the cached result with itself and miss a change of the code."""
    from recollect.experiments import context

    monkeypatch.setenv("RECOLLECT_CACHE", str(tmp_path / "cache"))
    it = I.get_item("distortion/jpeg")
    cache = R.ResultStore(tmp_path / "cache" / "results")
    fake = {"table": [1, 2, 3]}

    def cached(code):
        cache.put(R.Result(it.key, "smoke", it.config_dict("smoke"), R.fingerprint(fake),
                           {"code": code, "seconds": 0.0}, fake))

    cached("0" * 16)  # another code's result: not used, the item runs again
    got = I.fetch(context("smoke"), it.key)
    assert got.version != R.fingerprint(fake) and got.provenance["code"] == R.code_hash()
    assert got.version == I.current_version(it)  # made again: the committed fingerprint
    cached(R.code_hash())  # this code's result: used as it is (and checked against the committed fingerprint)
    got = I.fetch(context("smoke"), it.key)
    assert got.payload == fake
    assert not I._CHECKED["distortion"]["jpeg"]  # ... which it does not reproduce
    I._CHECKED.get("distortion", {}).pop("jpeg", None)


def test_item_state_and_a_second_fetch_reads_nothing_again(tmp, monkeypatch):
    from recollect.experiments import context

    monkeypatch.setenv("RECOLLECT_RESULTS", str(tmp / "results"))
    it = I.get_item("distortion/jpeg")
    store = R.ResultStore(tmp / "results")
    assert I.item_state(it, store) == ("missing", None)
    store.put(R.Result(it.key, "paper", it.config_dict("paper"), I.current_version(it), {"seconds": 1.0},
                       {"table": [1, 2]}))
    state, got = I.item_state(it, store)
    assert state == "done" and got.payload is None  # the state is read without the payload
    ctx = context("paper", device="cpu")
    first = I.fetch(ctx, it.key)
    assert first.payload == {"table": [1, 2]}
    for p in store.paths(it.key):
        if p.exists():
            p.unlink()
    assert I.fetch(ctx, it.key) is first  # one rendering reads a result once
    assert isinstance(I.fetch(context("paper", device="cpu"), it.key), I.Missing)
    new = I.Item("distortion", "no-smoke-record", "an item without a fingerprint", it.config, it.run, it.loops)
    assert I.item_state(new, store) == ("unversioned", None)


def test_run_names_unknown_items_with_the_chapter_s_own():
    from recollect.cli import _make_items

    with pytest.raises(SystemExit, match="distortion has no item ae-categorical-7-7; its items: .*ae-continuous-1"):
        _make_items("distortion", "cpu", ["ae-categorical-7-7"])


def test_cpu_minutes_come_from_the_counting_cpu_s_own_step_times():
    from recollect.queue import cpu_seconds

    it = I.get_item("distortion/ae-continuous-1")
    probe = R.config_hash(I._as_dict(it.cfg("probe")))
    loops = it.loops(it.cfg("paper"))
    counts = {it.key: {"probe_config": probe,
                       "loops": {l.name: {"seconds_per_step": 0.5, "flops_per_step": 1.0, "launches_per_step": 1.0}
                                 for l in loops}}}
    assert cpu_seconds(it, counts) == pytest.approx(0.5 * sum(l.steps for l in loops))
    assert cpu_seconds(it, {it.key: {**counts[it.key], "probe_config": "another"}}) is None  # another config
    assert cpu_seconds(it, {}) is None


def test_plan_shows_a_cpu_estimate_and_what_a_cpu_took(tmp, monkeypatch, capsys):
    from recollect import plan as P

    monkeypatch.setenv("RECOLLECT_RESULTS", str(tmp / "results"))
    shutil.copy(R.ROOT / "results" / "counts.json", tmp / "results" / "counts.json")
    it = I.get_item("distortion/ae-continuous-1")
    R.ResultStore(tmp / "results").put(R.Result(it.key, "paper", it.config_dict("paper"), I.current_version(it),
                                                {"seconds": 600.0, "gpu": None, "device": "CPU (x86_64)"}, {"x": 1}))
    df = P.plan_table(["distortion"]).set_index("item")
    assert df.loc["ae-continuous-1", "state"] == "done" and df.loc["ae-continuous-1", "cpu minutes taken"] == 10.0
    assert df["cpu minutes"].notna().all()  # every distortion item is counted with its CPU seconds per step
    P.print_plan(["distortion"])
    out = capsys.readouterr().out
    assert "python -m recollect run distortion --profile paper --item" in out
    assert "GPU items made on a CPU so far, minutes taken against this estimate: distortion" in out


def test_a_queue_on_a_cpu_estimates_with_the_counting_cpu_s_seconds(tmp, monkeypatch):
    from recollect.queue import cpu_seconds, estimate_seconds, gpu_queue

    monkeypatch.setenv("RECOLLECT_RESULTS", str(tmp / "results"))
    shutil.copy(R.ROOT / "results" / "counts.json", tmp / "results" / "counts.json")
    counts = json.loads((tmp / "results" / "counts.json").read_text())
    it = I.get_item("distortion/ae-continuous-1")
    cpu, (gpu, _) = cpu_seconds(it, counts), estimate_seconds(it, None, counts)
    assert cpu > 10 * gpu  # seconds on two CPU cores, not H200 seconds
    doc = gpu_queue(600, tmp / "out", names=[it.key], device="cpu", do_preflight=False, dry=True,
                    checkpoint_root=tmp / "ck")
    line = next(l for l in doc["lines"] if "would run" in l)
    assert f"would run {it.key}: estimate {cpu:.0f} s (seconds per probe step measured on the CPU" in line


def test_the_preflight_times_one_item_per_chapter_with_and_without_graphs_and_unpack_shows_it(tmp, monkeypatch):
    """The engine against eager on a real item at its real fusion size: one candidate of each chapter
    (a per-example stream where the chapter has one; else its first) is probed twice (captured steps,
    then every step eager); the ratio per loop is in its record and `unpack` prints it for the
    README. (On a CPU both runs are eager: the test checks the bookkeeping, a GPU the speed.)"""
    from recollect.queue import _chapter_picks

    cands = [I.get_item(k) for k in ("distortion/ae-categorical-6-2", "lifelong-cifar100/cifar10-ae",
                                      "lifelong-cifar100/coarse-fused-s0", "lifelong-cifar100/gemsplit-gem-s0")]
    assert _chapter_picks(cands) == {"distortion": "distortion/ae-categorical-6-2",
                                   "lifelong-cifar100": "lifelong-cifar100/coarse-fused-s0"}
    from recollect.queue import engine_vs_eager, preflight, unpack

    monkeypatch.setenv("RECOLLECT_RESULTS", str(tmp / "results"))
    monkeypatch.setenv("RECOLLECT_REHEARSAL", "1")  # the probes of the smoke configs: seconds
    monkeypatch.setenv("RECOLLECT_CACHE", str(tmp / "cache"))
    items = [I.get_item(k) for k in ITEMS[:2]]
    lines = []
    pf = preflight(items, "cpu", lines.append, smoke_check=False, compare_eager=True)
    first, second = (pf[it.key] for it in items)
    assert first["ok"] and second["ok"]
    assert "eager_loops" in first and "eager_loops" not in second  # once per chapter
    cmp = engine_vs_eager(first)
    assert set(cmp) == set(first["loops"]) and all(v["speedup"] > 0 and v["eager_s"] > 0 for v in cmp.values())
    assert any(l.startswith(f"engine against eager, {items[0].key}: ") and "ms per step" in l for l in lines)
    assert preflight(items[:1], "cpu", lines.append, smoke_check=False)[items[0].key].get("eager_loops") is None
    (tmp / "back").mkdir()
    (tmp / "back" / "queue-log.json").write_text(json.dumps({"preflight": pf}, default=str))
    # the rates of this command merge into those of the repository, item by item
    from recollect.queue import RATES_FILE, _load_json, measured_rates

    (tmp / "back" / RATES_FILE).write_text(json.dumps(R.encode(measured_rates({items[0].key: first}), {})))
    (tmp / "results" / RATES_FILE).write_text(json.dumps(R.encode(measured_rates({items[1].key: second}), {})))
    said = []
    unpack(tmp / "back", R.ResultStore(tmp / "results"), log=said.append)
    assert set(_load_json(tmp / "results" / RATES_FILE)) == {items[0].key, items[1].key}
    eager = [l for l in said if "engine against eager" in l]
    assert len(eager) == 1 and items[0].key in eager[0] and "x)" in eager[0]


def test_the_speed_benchmark_stopped_by_its_time_limit_keeps_the_rows_it_timed(tmp_path):
    """A GPU session runs bench/speed.py under `timeout`: stopped early it still writes its table,
    the rows timed so far and a line saying it is incomplete."""
    out = tmp_path / "bench.md"
    p = subprocess.Popen([sys.executable, str(ROOT / "bench" / "speed.py"), "--quick", "--out", str(out)],
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    first = p.stdout.readline()  # the handler is in place once it says it is timing
    assert first.startswith("timing on "), first
    time.sleep(3)
    p.send_signal(signal.SIGTERM)
    log = first + p.communicate(timeout=120)[0]
    assert p.returncode == 0, log
    table, raw = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    assert "| workload | version | seconds | how measured | speed-up |" in table
    assert len(raw["rows"]) == table.count("\n| ") - 1
    if "stopped" in raw:  # the usual case: it takes longer than three seconds
        assert f"Incomplete: stopped by signal {signal.SIGTERM.value}" in table


def test_a_session_s_next_command_reuses_the_preflight_and_probes_just_in_time(tmp, monkeypatch):
    """The preflight runs item by item, just before the queue decides on each, and only for an item
    that could fit; the session's next command (same machine) reuses the records instead of probing
    again (the GPU minutes go to the items)."""
    from recollect import queue as Q

    monkeypatch.setenv("RECOLLECT_RESULTS", str(tmp / "results"))
    monkeypatch.setenv("RECOLLECT_REHEARSAL", "1")
    monkeypatch.setenv("RECOLLECT_CACHE", str(tmp / "cache"))
    items = [I.get_item(k) for k in ITEMS[:2]]
    cache = tmp / "cache" / Q.PREFLIGHT_CACHE
    first = Q.preflight(items, "cpu", print, smoke_check="chapter", cache=cache)  # the queue's setting
    assert all(r["ok"] for r in first.values()) and cache.exists()
    # one smoke check per chapter (each costs a whole smoke run), on its first item here
    assert "smoke_check" in first[items[0].key] and "smoke_check" not in first[items[1].key]

    def no_run(*a, **k):
        raise AssertionError("probed again")

    monkeypatch.setattr(I, "run_item", no_run)
    lines = []
    again = Q.preflight(items, "cpu", lines.append, cache=cache)
    assert {k: (r["ok"], r["probe_config"], r["loops"].keys()) for k, r in again.items()} == \
        {k: (r["ok"], r["probe_config"], r["loops"].keys()) for k, r in first.items()}
    assert all("measured by an earlier command of this session" in l for l in lines if l.startswith("preflight"))
    # the queue: an item that would not fit even at PROBE_FLOOR of its estimate is skipped unprobed
    cache.unlink()
    monkeypatch.setattr(Q, "cpu_seconds", lambda it, counts=None: 10_000.0)
    doc = Q.gpu_queue(60, tmp / "out", names=[items[0].key], device="cpu", checkpoint_root=tmp / "ck")
    assert not doc["preflight"] and "not probed" in doc["skipped"][0]["why"]
