"""The budgeted GPU queue: run the most important missing paper-profile items that fit the time left.

    python -m recollect gpu-queue --budget 540 --out $OUT

GPU time is scarce (one H200, 15 minutes a session, commands of at most 10 minutes, a bare machine
that is given back after 30 s idle), so the queue

1. picks the items to consider: paper profile, not current in ``results/`` (missing or stale),
   filtered by stage / chapter / name, in priority order with dependencies first;
2. runs a **preflight** of each item just before deciding on it (:class:`Preflight`; only for an
   item that could fit at :data:`PROBE_FLOOR` of its estimate; once per session: the machine-local
   records serve the session's next commands): every loop of the item for a few steps at the
   paper's shapes (its probe config), timed per step on the device, which turns the plan's counted
   estimate into a measured one (``rates.json``); and, once per chapter, a code path at its smoke
   config on the device, compared with the committed CPU numbers (``results/smoke``): a failed run
   or a payload of another kind stops the item, numbers that moved are logged (:func:`_smoke_check`);
3. runs items in order, never starting one whose estimate (measured where possible, with a margin)
   does not fit the time left, and writes each result the moment it finishes, packed into
   ``OUT/results-N.tar`` (the device tool brings back at most 8 files, 64 MiB together; the loose
   files stay on the machine), so a command killed at its limit loses at most the running item;
4. keeps a machine-local checkpoint of a long item (``recollect.cache.checkpoints_dir``) so the next
   command of the same session continues it, and a machine-local copy of every result
   (``recollect.cache.session_results_dir``) so the session's next command can build on it (a
   teacher made by the first call, its students in the second); nothing depends on the machine
   staying warm: what came back in ``OUT`` is complete.

Back on any machine, ``python -m recollect unpack DIR`` checks and copies the results into
``results/``; the chapters are then rendered at the paper profile on a CPU (``make paper-book``).
"""
from __future__ import annotations

import io
import json
import math
import os
import pathlib
import signal
import tarfile
import tempfile
import time
import traceback

import torch

from . import results as R
from .cache import cache_dir, checkpoints_dir, session_results_dir
from .experiments import items as I
from .train import probe
from .utils import device_name

__all__ = ["LayeredStore", "todo", "estimate_seconds", "Preflight", "preflight", "measured_rates", "gpu_queue", "pack",
           "unpack", "compare_numbers", "RATES_FILE", "COUNTS_FILE", "MARGIN", "engine_vs_eager"]

RATES_FILE = "rates.json"
COUNTS_FILE = "counts.json"
#: an item starts only if estimate * MARGIN + SLACK seconds fit in the time left
MARGIN = 1.3
SLACK = 10.0
#: a resumable item that cannot finish is still started when this many seconds are left: it saves a
#: checkpoint at its deadline and the session's next command continues it
RESUMABLE_MIN = 90.0
#: the queue probes an item (its preflight) only if it would fit at this fraction of its estimate
#: before the probe (the probe's measured rate then decides); the rest are skipped unprobed
PROBE_FLOOR = 0.5
#: the machine-local preflight records of the session's commands (``recollect.cache``)
PREFLIGHT_CACHE = "preflight.json"
PACK_LIMIT = 15 * 2**20
#: packs one command may bring back: 64 MiB come back together, with the queue's log and rates beside them
MAX_PACKS = 4


class LayeredStore(R.ResultStore):
    """Writes to ``root``; reads from ``root`` first, then from each of ``fallbacks`` (the repository's
    results): a dependency made in an earlier session is used, one made in this session too."""

    def __init__(self, root, fallbacks=()):
        super().__init__(root)
        self.fallbacks = [R.ResultStore(f) if not isinstance(f, R.ResultStore) else f for f in fallbacks]

    def read(self, item: str, payload: bool = True):
        got = super().read(item, payload)
        if got is not None:
            return got
        for f in self.fallbacks:
            got = f.read(item, payload)
            if got is not None:
                return got
        return None


# ------------------------------------------------------------------------------------------------
# what to run
# ------------------------------------------------------------------------------------------------
def _state(item: I.Item, store: R.ResultStore) -> str:
    return I.item_state(item, store)[0]


def todo(store: R.ResultStore, stages=("first",), chapters=None, names=None, gpu: bool | None = True) -> list[I.Item]:
    """Items to make, in the order to make them: not current in ``store``; dependencies before the
    items that need them; otherwise by stage, then priority.

    Items named in ``names`` (key or, with ``chapters``, name) are made whatever their stage and
    whether they need a GPU: naming one is asking for it. A name that matches no item is an error."""
    reg = I.paper_items()
    if names:
        known = {k for it in reg.values() if not chapters or it.chapter in chapters for k in (it.key, it.name)}
        unknown = [n for n in names if n not in known]
        every = {k for it in I.registry().values() if not chapters or it.chapter in chapters for k in (it.key, it.name)}
        smoke_only = [n for n in unknown if n in every]
        if smoke_only:
            raise ValueError(f"{', '.join(smoke_only)}: an item of the smoke profile only (a smoke twin no paper "
                             "table reads); it is not made at the paper profile")
        if unknown:
            if chapters:
                mine = sorted(it.name for it in reg.values() if it.chapter in chapters)
                raise ValueError(f"{', '.join(chapters)} has no item {', '.join(unknown)}; its items: "
                                 f"{', '.join(mine)} (`python -m recollect plan`)")
            raise ValueError(f"no item is called {', '.join(unknown)}; `python -m recollect plan` lists every "
                             "item (name one as CHAPTER/NAME)")
    want = []
    for it in reg.values():
        if chapters and it.chapter not in chapters:
            continue
        if names:
            if it.key not in names and it.name not in names:
                continue
        elif (stages and it.stage not in stages) or (gpu is not None and it.gpu != gpu):
            continue
        if _state(it, store) in ("missing", "stale"):
            want.append(it)
    order = {s: i for i, s in enumerate(I.STAGES)}
    want.sort(key=lambda it: (order[it.stage], it.priority, it.key))
    out, seen = [], set()

    def add(it, chain=()):
        if it.key in seen:
            return
        if it.key in chain:
            raise ValueError(f"items depend on each other in a cycle: {' -> '.join(chain + (it.key,))}")
        for d in I._dep_keys(it):
            dep = reg[d]
            if _state(dep, store) in ("missing", "stale"):
                add(dep, chain + (it.key,))
        seen.add(it.key)
        out.append(it)

    for it in want:
        add(it)
    return out


# ------------------------------------------------------------------------------------------------
# estimates
# ------------------------------------------------------------------------------------------------
#: constants of the counted estimate (H200; from the early probes, see shared/probe-notes.md)
EAGER_OP_S = 30e-6       # host time of one eager kernel launch (25-46 us measured per op)
GRAPH_KERNEL_S = 2e-6    # device time of one small kernel replayed from a CUDA graph (~1.4 us seen)
FLOP_RATE = 40e12        # effective float32/TF32 rate of these small convolutions and matmuls
CONSTANTS = {"EAGER_OP_S": EAGER_OP_S, "GRAPH_KERNEL_S": GRAPH_KERNEL_S, "FLOP_RATE": FLOP_RATE}


def _load_json(path: pathlib.Path) -> dict:
    return R.decode(json.loads(path.read_text()), {}) if path.exists() else {}


def counted_step_seconds(flops: float, launches: float, captured: bool) -> float:
    """Seconds per step from counted FLOPs and launches: host-bound eager steps pay every launch on
    the host; captured steps pay a small device cost per kernel; both pay the arithmetic."""
    if captured:
        return launches * GRAPH_KERNEL_S + flops / FLOP_RATE
    return max(launches * EAGER_OP_S, flops / FLOP_RATE)


def _arithmetic(c: dict | None, rate: float | None):
    """``name -> seconds`` of a counted probe step's FLOPs at ``rate`` FLOP/s (None without both)."""
    if not c or not rate:
        return None
    return lambda n: c["loops"][n]["flops_per_step"] / rate


def _counted(c: dict | None, chash: str, names: set) -> bool:
    return bool(c) and c.get("probe_config") == chash and names <= set(c["loops"])


def estimate_seconds(item: I.Item, rates: dict | None = None, counts: dict | None = None) -> tuple[float | None, str]:
    """``(seconds, how)`` of ``item`` at the paper profile: measured per-step rates (a preflight) when
    there are some for this config, else counted FLOPs and launches, else ``(None, why)``. A loop that
    does more arithmetic per step than its probe step (``Loop.work``) needs the counted FLOPs on
    either path (:func:`recollect.experiments.items.step_cost`)."""
    cfg = item.cfg("paper")
    chash = R.config_hash(I._as_dict(item.cfg("probe")))
    loops = item.loops(cfg)
    names = I.loop_names(loops)
    c = (counts or {}).get(item.key)
    counted = _counted(c, chash, names)
    scaled = any(l.work != 1 for l in loops)
    arith = _arithmetic(c, FLOP_RATE) if counted else None
    r = (rates or {}).get(item.key)
    if r and r.get("probe_config") == chash and names <= set(r["loops"]) and (arith or not scaled):
        sec = sum(l.steps * I.step_cost(l, lambda n: r["loops"][n]["seconds_per_step"], arith) for l in loops)
        return sec, f"measured on {r.get('device', 'a GPU')} ({r.get('date', '')[:10]})"
    if counted:
        sec = 0.0
        for l in loops:
            def counted_s(n, l=l):
                lc = c["loops"][n]
                return counted_step_seconds(lc["flops_per_step"], lc["launches_per_step"], l.captured)
            sec += l.steps * I.step_cost(l, counted_s, arith)
        return sec, "counted (FLOPs and launches per step on a CPU probe)"
    return None, "not counted yet: `python -m recollect plan --count`"


def cpu_seconds(item: I.Item, counts: dict | None = None) -> float | None:
    """Seconds ``item`` would take at the paper profile on the CPU that counted it (``plan --count``
    times each loop's probe steps as it counts them): steps x measured seconds per step (a growing
    loop extrapolated in its counted FLOPs, :func:`recollect.experiments.items.step_cost`), and for a
    loop whose real step does more arithmetic than its probe step (``Loop.work``) at least its FLOPs
    at that CPU's measured matrix-multiply rate (``flop_rate``, recorded by the count). None when not
    counted at this config (or counted before the rate was recorded). An estimate for a machine like
    that one (2 cores here)."""
    cfg = item.cfg("paper")
    c = (counts or {}).get(item.key)
    loops = item.loops(cfg)
    if not c or c.get("probe_config") != R.config_hash(I._as_dict(item.cfg("probe"))):
        return None
    if not all(n in c["loops"] and c["loops"][n].get("seconds_per_step") for n in I.loop_names(loops)):
        return None
    arith = _arithmetic(c, c.get("flop_rate"))
    if arith is None and any(l.work != 1 for l in loops):
        return None
    return sum(l.steps * I.step_cost(l, lambda n: c["loops"][n]["seconds_per_step"], arith,
                                     flops=lambda n: c["loops"][n].get("flops_per_step") or 0.0) for l in loops)


def matmul_flop_rate(n: int = 1024, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply rate in FLOP/s (best of ``repeats`` n x n products on the
    CPU, with torch's threads as set): what ``plan --count`` records beside its counts so that
    :func:`cpu_seconds` can cost arithmetic the probe's small steps do not show."""
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    torch.mm(a, a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


# ------------------------------------------------------------------------------------------------
# preflight
# ------------------------------------------------------------------------------------------------
def compare_numbers(ours, ref, rtol: float = 0.1, atol: float = 0.05, path: str = "") -> list[str]:
    """Where two JSON payload bodies differ beyond ``atol + rtol * |ref|`` (numbers) or at all (the
    rest); a list of paths with the two values, empty when they agree."""
    return [msg for _, msg in _differences(ours, ref, rtol, atol, path)]


#: a JSON body's encodings of non-finite numbers (``recollect.results.encode``)
_NONFINITE = ("NaN", "Infinity", "-Infinity")


def _differences(ours, ref, rtol: float, atol: float, path: str) -> list[tuple[str, str]]:
    """:func:`compare_numbers` with each difference's kind: ``number`` (both finite numbers, beyond
    the tolerance), ``nonfinite`` (ours is NaN or infinite where the reference is a number) or
    ``structure`` (a missing key, another length, another string or type)."""
    out = []
    if isinstance(ref, dict) and isinstance(ours, dict):
        for k in ref:
            if k not in ours:
                out.append(("structure", f"{path}/{k}: missing"))
            else:
                out += _differences(ours[k], ref[k], rtol, atol, f"{path}/{k}")
        return out
    if isinstance(ref, list) and isinstance(ours, list):
        if len(ref) != len(ours):
            return [("structure", f"{path}: {len(ours)} entries against {len(ref)}")]
        for i, (a, b) in enumerate(zip(ours, ref)):
            out += _differences(a, b, rtol, atol, f"{path}/{i}")
        return out
    num = (int, float)
    if isinstance(ref, num) and not isinstance(ref, bool):
        if isinstance(ours, num) and not isinstance(ours, bool):
            if not math.isfinite(float(ours)):
                out.append(("nonfinite", f"{path}: {ours!r} against {ref!r}"))
            elif abs(float(ours) - float(ref)) > atol + rtol * abs(float(ref)):
                out.append(("number", f"{path}: {ours!r} against {ref!r}"))
            return out
        if ours in _NONFINITE:
            return [("nonfinite", f"{path}: {ours!r} against {ref!r}")]
    if ref in _NONFINITE and isinstance(ours, (int, float)) and not isinstance(ours, bool):
        return [("number", f"{path}: {ours!r} against {ref!r}")]  # finite where the CPU's was not: a value
    if ours != ref:
        out.append(("structure", f"{path}: {ours!r} against {ref!r}"))
    return out


class Preflight:
    """One command's preflight, item by item: :meth:`run` probes an item's loops for a few steps on
    ``device`` at the paper's shapes (its probe config; timed per step) and checks a smoke twin's
    smoke config on the device against the committed CPU run (:func:`_smoke_check`):
    ``smoke_check="chapter"`` (the queue's) once per chapter, on the item :func:`_chapter_picks` names
    (the chapter's per-example stream where it has one, else its first candidate); ``True`` for
    every item (once per twin); ``False`` never. Every probed item still runs its own code path at
    the paper's shapes on the device, under the strict host-sync check.

    The queue calls :meth:`run` just before it decides on an item, so a command spends its probes on
    the items it may make, not on the whole list. ``cache`` (a machine-local JSON file) keeps every
    record with the library's source hash: the session's next command (same machine, still warm)
    reuses the probes and smoke checks of the earlier ones instead of repeating them.

    ``compare_eager`` (default: on CUDA) also probes one candidate of each chapter
    (:func:`_chapter_picks`: a per-example stream where there is one) a second time with every captured
    step run eagerly (``recollect.train.capture.eager_steps``): the same item at its real fusion
    size, with and without the engine's CUDA graphs (:func:`engine_vs_eager`).

    A record: ``{"probe_config", "loops": {name: stats}, "device", "date", "ok", "error",
    "smoke_check", "seconds"}`` (and ``"eager_loops"`` for the item probed eagerly as well)."""

    def __init__(self, candidates, device, log, smoke_check: bool | str = "chapter", store=None,
                 compare_eager: bool | None = None, cache: pathlib.Path | None = None):
        self.dev = torch.device(device)
        self.log, self.smoke_check, self.store = log, smoke_check, store
        if compare_eager is None:
            compare_eager = self.dev.type == "cuda"
        picks = _chapter_picks(candidates)
        self.eager_of = picks if compare_eager else {}
        # one smoke check per chapter (each costs a whole smoke run: 5-38 s per item on this project's
        # loaded 2-core CPU in a queue rehearsal, likely seconds each on a GPU, and a per-item check
        # would spend minutes of a 15-minute session), on the item whose code path is the chapter's
        # main one: its per-example stream where it has one
        self.smoke_of = picks if smoke_check == "chapter" else None
        self.memo: dict = {}
        self.cache_path = None if cache is None else pathlib.Path(cache)
        self.code = R.code_hash()
        doc = {}
        if self.cache_path is not None and self.cache_path.exists():
            try:
                doc = json.loads(self.cache_path.read_text())
            except ValueError:
                doc = {}
        same = doc.get("code") == self.code and doc.get("device") == device_name(self.dev)
        self.records: dict = dict(doc.get("items", {})) if same else {}
        self.checked: dict = dict(doc.get("smoke", {})) if same else {}

    def _save(self):
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"code": self.code, "device": device_name(self.dev), "items": self.records, "smoke": self.checked}
        R.atomic_write(self.cache_path, (json.dumps(doc, default=str) + "\n").encode())

    def _probe(self, it: I.Item, memo: dict) -> dict:
        """The item's probe config run on the device under a recorder: per-loop step times."""
        with probe.Recorder(sync=self.dev.type == "cuda") as r, _strict_sync(self.dev):
            I.run_item(it, "probe", self.dev, self.store, _memo=memo)
        return r.summary()

    def run(self, it: I.Item) -> dict:
        from .train.capture import eager_steps

        dev, log = self.dev, self.log
        probe_hash = R.config_hash(I._as_dict(it.cfg("probe")))
        old = self.records.get(it.key)
        if old is not None and old.get("probe_config") == probe_hash:
            log(f"preflight {it.key}: {'ok' if old['ok'] else 'FAILED: ' + old.get('error', '')} "
                "(measured by an earlier command of this session)")
            return old
        rec = {"probe_config": probe_hash, "device": device_name(dev),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ok": True}
        t0 = time.perf_counter()
        try:
            rec["loops"] = self._probe(it, self.memo)
        except Exception as e:  # an item whose probe fails is not run: say why
            rec.update(ok=False, error=f"{type(e).__name__}: {e}", trace=traceback.format_exc()[-2000:])
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        if self.smoke_check and rec["ok"] and (self.smoke_of is None or self.smoke_of.get(it.chapter) == it.key):
            twin = I.get_item(_twin(it))
            if twin.key not in self.checked:
                t1 = time.perf_counter()
                sc = self.checked[twin.key] = _smoke_check(twin, dev)
                sc["seconds"] = round(time.perf_counter() - t1, 2)
                if sc["numbers"]:
                    log(f"note: {twin.key} at smoke on {rec['device']}: {sc['numbers']} numbers beyond the tolerance "
                        f"(e.g. {sc['differences'][0]}): expected where the device draws other random numbers "
                        "(see _smoke_check); not a reason to skip")
            rec["smoke_check"] = self.checked[twin.key]
            if self.checked[twin.key]["blocking"]:
                rec["ok"] = False
                rec["error"] = (f"the smoke run on {rec['device']} failed or differs from the committed CPU run in "
                                f"kind, not only in value: {self.checked[twin.key]['blocking'][0]}")
        log(f"preflight {it.key}: {'ok' if rec['ok'] else 'FAILED: ' + rec.get('error', '')} ({rec['seconds']:.1f} s"
            + (f", smoke run {rec['smoke_check']['seconds']:.1f} s" if rec.get("smoke_check", {}).get("seconds") else "")
            + ")")
        if self.eager_of.get(it.chapter) == it.key and rec["ok"]:
            try:
                deps = {k: v for k, v in self.memo.items() if k != it.key}  # its dependencies' probes, not itself
                with eager_steps():
                    rec["eager_loops"] = self._probe(it, deps)
                log(f"engine against eager, {it.key}: {engine_vs_eager_text(rec)}")
            except Exception as e:  # the comparison is a measurement, never a reason to skip the item
                log(f"engine against eager, {it.key}: not measured ({type(e).__name__}: {e})")
        self.records[it.key] = rec
        self._save()
        return rec


def preflight(candidates: list[I.Item], device, log, smoke_check: bool | str = True, store=None,
              compare_eager: bool | None = None, cache: pathlib.Path | None = None) -> dict:
    """:class:`Preflight` of every candidate, in order: ``{item key: record}``."""
    pre = Preflight(candidates, device, log, smoke_check, store, compare_eager, cache)
    return {it.key: pre.run(it) for it in candidates}


def measured_rates(pf: dict) -> dict:
    """The records of ``pf`` (item key -> preflight record) as ``rates.json`` keeps them."""
    return {k: {"probe_config": v["probe_config"], "loops": v["loops"], "device": v["device"], "date": v["date"]}
            for k, v in pf.items() if v.get("ok") and v.get("loops")}


#: loops of the per-example streams (one captured step per incoming example or student update): the
#: workloads the engine's speed target is about, so the eager comparison prefers an item that has one
STREAM_LOOPS = ("lifelong", "students")


def _chapter_picks(candidates) -> dict:
    """Chapter -> the candidate probed eagerly too: its first item with a captured stream loop
    (:data:`STREAM_LOOPS`), else its first."""
    picks = {}
    for it in candidates:
        try:
            stream = any(l.captured and l.name in STREAM_LOOPS for l in it.loops(it.cfg("paper")))
        except Exception:  # an item whose loops cannot be listed here is not a stream
            stream = False
        if it.chapter not in picks or (stream and not picks[it.chapter][1]):
            picks[it.chapter] = (it.key, stream)
    return {c: k for c, (k, _) in picks.items()}


def engine_vs_eager(rec: dict) -> dict:
    """Per loop of a preflight record probed both ways: seconds per step with the engine's captured
    steps and with the same steps run eagerly, and their ratio (the speed-up of the graphs on the
    same fused model; the fusion's own gain, many models in one network, comes on top and is
    ``bench/speed.py``'s)."""
    out = {}
    for name, e in (rec.get("eager_loops") or {}).items():
        c = (rec.get("loops") or {}).get(name)
        if not c:
            continue
        ce, ee = c.get("seconds_per_step"), e.get("seconds_per_step")
        if ce and ee and math.isfinite(ce) and math.isfinite(ee) and ce > 0:
            out[name] = {"engine_s": ce, "eager_s": ee, "speedup": ee / ce}
    return out


def engine_vs_eager_text(rec: dict) -> str:
    cmp = engine_vs_eager(rec)
    if not cmp:
        return "no loop timed both ways"
    return "; ".join(f"{k} {v['eager_s'] * 1e3:.2f} -> {v['engine_s'] * 1e3:.2f} ms per step ({v['speedup']:.1f}x)"
                     for k, v in sorted(cmp.items()))


def _twin(it: I.Item) -> str:
    if it.versioned_by is None:
        return it.key
    return it.versioned_by if "/" in it.versioned_by else f"{it.chapter}/{it.versioned_by}"


def _smoke_check(item: I.Item, dev) -> dict:
    """The item's smoke config run on ``dev`` against the committed CPU run (``results/smoke``).

    What stops the item (``blocking``): the run fails, or its payload differs in kind (a key, a
    length, a string, a type) or holds a NaN or infinity where the CPU run has a number. Numbers
    beyond :func:`compare_numbers`' tolerance are counted (``numbers``) and logged, not blocking: a
    GPU draws other random numbers than the CPU for what is sampled on the device (the Gumbel noise
    of the autoencoders, without an explicit CPU generator there), and at smoke sizes the students'
    accuracies move by whole test images with them. Measured on the CPU (portable arithmetic) with
    only the device noise drawn from another generator, as on a GPU: beyond the tolerance were 5 of
    the 40 accuracies of the MNIST LeNet students, 1 of 24 of the MLP students, 4 of 28 in each of
    the two Omniglot student items (which the old rule, any number beyond it, would have skipped on a
    GPU); every other item within it (the lifelong items keep their accuracies in arrays, which this
    check does not compare)."""
    ref = I.smoke_record(item)
    if ref is None:
        return {"blocking": ["no committed smoke record"], "numbers": 0, "differences": []}
    try:
        res = I.run_item(item, "smoke", dev, None)
    except Exception as e:
        return {"blocking": [f"the smoke run failed: {type(e).__name__}: {e}"], "numbers": 0, "differences": []}
    diffs = _differences(R.encode(res.payload, {}), ref["payload"], 0.1, 0.05, "")
    blocking = [m for k, m in diffs if k != "number"]
    numbers = [m for k, m in diffs if k == "number"]
    return {"blocking": blocking[:20], "numbers": len(numbers), "differences": numbers[:20], "count": len(diffs)}


class _strict_sync:
    """On CUDA: captured steps run under ``torch.cuda.set_sync_debug_mode("error")`` (a step that
    would block the host fails the preflight instead of silently costing GPU time)."""

    def __init__(self, dev):
        self.on = dev.type == "cuda"

    def __enter__(self):
        if self.on:
            try:
                from .train import capture

                capture.STRICT_SYNC = True
            except ImportError:
                self.on = False
        return self

    def __exit__(self, *exc):
        if self.on:
            from .train import capture

            capture.STRICT_SYNC = False
        return False


# ------------------------------------------------------------------------------------------------
# packing results for the trip back
# ------------------------------------------------------------------------------------------------
def pack(src: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
    """Pack every result under ``src`` into ``out/results-N.tar`` files of at most 15 MiB each (the
    device tool brings back at most 8 files of 16 MiB), atomically."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in (".json", ".npz"))
    groups, cur, size = [], [], 0
    for p in files:
        n = p.stat().st_size + 1024
        if cur and size + n > PACK_LIMIT:
            groups.append(cur)
            cur, size = [], 0
        cur.append(p)
        size += n
    if cur:
        groups.append(cur)
    if len(groups) > MAX_PACKS:
        raise RuntimeError(f"results need {len(groups)} packs of 15 MiB; at most {MAX_PACKS} come back")
    written = []
    for i, grp in enumerate(groups, 1):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for p in grp:
                tar.add(p, arcname=str(p.relative_to(src)))
        path = out / f"results-{i}.tar"
        R.atomic_write(path, buf.getvalue())
        written.append(path)
    for stale in out.glob("results-*.tar"):
        if stale not in written:
            stale.unlink()
    return written


def unpack(src: pathlib.Path, dest: R.ResultStore | None = None, log=print) -> list[str]:
    """Copy the results a GPU session brought back (``results-N.tar`` files or a ``results/`` folder
    under ``src``) into ``dest`` (the repository's ``results/``), after checking that each is a
    current paper result of a known item with the current config; merge the preflight's measured
    rates (``rates.json``) into ``dest``'s, item by item. Returns the items copied."""
    dest = dest or R.ResultStore()
    src = pathlib.Path(src)
    found = {}
    for tar in sorted(src.glob("results-*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.isfile():
                    found[m.name] = t.extractfile(m).read()
    folder = src / "results"
    if folder.is_dir():
        for p in folder.rglob("*"):
            if p.is_file():
                found.setdefault(str(p.relative_to(folder)), p.read_bytes())
    copied = []
    for name in sorted(n for n in found if n.endswith(".json")):
        npz = found.get(name[:-5] + ".npz")
        res = R.Result.from_files(found[name], npz)
        try:
            item = I.get_item(res.item)
        except ValueError:
            log(f"skipped {name}: no such item")
            continue
        want = item.config_dict("paper")
        if res.profile != "paper" or res.config_hash != R.config_hash(want):
            log(f"skipped {res.item}: made with another config than the current paper profile")
            continue
        if res.version != I.current_version(item):
            log(f"note: {res.item} is stale already (made by code whose smoke fingerprint differs); kept as stale")
        dest.put(res)
        copied.append(res.item)
        log(f"results/{res.item}: {res.provenance.get('device')} {res.provenance.get('seconds', 0):.0f} s "
            f"{res.provenance.get('date', '')}")
    got = src / RATES_FILE
    if got.is_file():  # the preflight's measured rates: merged, so every command's items keep theirs
        merged = {**_load_json(dest.root / RATES_FILE), **_load_json(got)}
        R.atomic_write(dest.root / RATES_FILE, (json.dumps(R.encode(merged, {}), indent=1) + "\n").encode())
        log(f"{RATES_FILE}: {len(_load_json(got))} measured items merged into {len(merged)}")
    qlog = src / "queue-log.json"
    if qlog.is_file():
        doc = json.loads(qlog.read_text())
        for key, rec in sorted((doc.get("preflight") or {}).items()):
            if rec.get("eager_loops"):
                log(f"engine against eager on {rec.get('device')} (the README quotes these), {key}: "
                    f"{engine_vs_eager_text(rec)}")
    return copied


# ------------------------------------------------------------------------------------------------
# the queue
# ------------------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def gpu_queue(budget: float, out: str | os.PathLike, *, stages=("first",), chapters=None, names=None,
              device: str = "cuda", do_preflight: bool = True, cpu_items: bool = False, dry: bool = False,
              checkpoint_root=None, progress: bool = False) -> dict:
    """Run the queue for at most ``budget`` seconds (module docstring). Returns the log."""
    t_start = time.monotonic()
    deadline = t_start + float(budget)
    from .data import OFFLINE_ENV

    os.environ.setdefault(OFFLINE_ENV, "1")  # a GPU host has no network: a missing dataset fails at once
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu-queue: no CUDA GPU is visible; the queue makes paper results on a GPU "
                         "(use --device cpu only for a test of the queue itself)")
    # this command's results go to OUT; the results of the session's earlier commands (same machine,
    # still warm) and the repository's are read as dependencies
    session = R.ResultStore(session_results_dir())
    # this command's results, loose, on the machine (only their packs go to OUT: nothing comes back twice)
    made = pathlib.Path(tempfile.mkdtemp(prefix="recollect-queue-"))
    store = LayeredStore(made, [session, R.results_dir()])
    ck_root = pathlib.Path(checkpoint_root or checkpoints_dir())
    lines: list[str] = []
    log_doc = {"budget": budget, "device": device_name(dev), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "done": [], "failed": [], "skipped": [], "preflight": {}, "lines": lines}

    def log(msg):
        line = f"[{time.monotonic() - t_start:6.1f} s] {msg}"
        print(line, flush=True)
        lines.append(line)
        R.atomic_write(out / "queue-log.json", (json.dumps(log_doc, indent=1, default=str) + "\n").encode())

    def on_term(signum, frame):
        raise _Stop(f"signal {signum}")

    old = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        cands = todo(store, stages, chapters, names, gpu=None if cpu_items else True)
        # an item with a checkpoint on this machine was started by an earlier command: finish it first
        cands.sort(key=lambda it: 0 if I.checkpoint_files(ck_root, it) else 1)
        log(f"{len(cands)} items to make: {', '.join(it.key for it in cands) or 'none'}")
        rates = _load_json(R.results_dir() / RATES_FILE)
        counts = _load_json(R.results_dir() / COUNTS_FILE)
        pre = Preflight(cands, dev, log, store=store, cache=cache_dir() / PREFLIGHT_CACHE) \
            if do_preflight and cands else None

        def estimate(it):
            est, how = estimate_seconds(it, rates, counts)
            if dev.type == "cpu":
                # a queue on a CPU: the counting CPU's measured seconds per probe step, not H200 seconds
                cpu = cpu_seconds(it, counts)
                if cpu is not None:
                    est, how = cpu, "seconds per probe step measured on the CPU that counted it"
            return est, how

        for it in cands:
            left = deadline - time.monotonic()
            est, how = estimate(it)
            if any(_state(I.get_item(d), store) != "done" for d in I._dep_keys(it)):
                log_doc["skipped"].append({"item": it.key, "why": "a dependency is not done"})
                log(f"skip {it.key}: a dependency is not done")
                continue
            resumable_start = it.resumable and left > RESUMABLE_MIN
            if pre is not None:
                # probe just in time, and only an item that could fit at PROBE_FLOOR of its estimate
                if est is not None and est * PROBE_FLOOR * MARGIN + SLACK > left and not resumable_start:
                    why = (f"estimate {est:.0f} s ({how}): it would not fit the {left:.0f} s left even at "
                           f"{PROBE_FLOOR:g} of it; not probed")
                    log_doc["skipped"].append({"item": it.key, "why": why})
                    log(f"skip {it.key}: {why}")
                    continue
                rec = log_doc["preflight"][it.key] = pre.run(it)
                if not rec.get("ok"):
                    log_doc["skipped"].append({"item": it.key, "why": rec.get("error", "")})
                    continue
                measured = measured_rates(log_doc["preflight"])
                R.atomic_write(out / RATES_FILE, (json.dumps(R.encode(measured, {}), indent=1) + "\n").encode())
                rates = {**rates, **measured}
                left = deadline - time.monotonic()
                est, how = estimate(it)
            partial = False
            if est is None or est * MARGIN + SLACK > left:
                if it.resumable and est is not None and left > RESUMABLE_MIN:
                    partial = True  # runs until its deadline, checkpoints, continues in the next command
                else:
                    why = f"estimate {'unknown' if est is None else f'{est:.0f} s'} ({how}) does not fit the {left:.0f} s left"
                    log_doc["skipped"].append({"item": it.key, "why": why})
                    log(f"skip {it.key}: {why}")
                    continue
            if dry:
                log(f"would run {it.key}: estimate {est:.0f} s ({how})")
                continue
            log(f"run {it.key}: estimate {est:.0f} s ({how}), {left:.0f} s left"
                + (" (resumable: it checkpoints at the deadline and continues in the next command)" if partial else ""))
            t0 = time.monotonic()
            try:
                res = I.run_item(it, "paper", dev, store, progress=progress, checkpoint_root=ck_root,
                                 deadline=deadline - SLACK)
            except _Stop:
                raise
            except I.Incomplete as e:
                log_doc["partial"] = log_doc.get("partial", []) + [{"item": it.key, "seconds": round(time.monotonic() - t0, 1)}]
                log(f"partial {it.key}: {e}")
                continue
            except Exception as e:
                log_doc["failed"].append({"item": it.key, "error": f"{type(e).__name__}: {e}",
                                          "trace": traceback.format_exc()[-3000:]})
                log(f"FAILED {it.key}: {type(e).__name__}: {e}")
                continue
            took = time.monotonic() - t0
            session.put(res)
            log_doc["done"].append({"item": it.key, "seconds": round(took, 1), "estimate": round(est, 1), "how": how})
            pack(made, out)
            log(f"done {it.key} in {took:.0f} s (estimate {est:.0f} s); packed")
    except _Stop as e:
        log(f"stopped by {e}: results finished so far are packed")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        pack(made, out)
        log(f"end: {len(log_doc['done'])} items done, {len(log_doc['failed'])} failed, {len(log_doc['skipped'])} skipped")
    return log_doc
