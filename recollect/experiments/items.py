"""Experiments as items: named, typed, estimated, with their dependencies, run the same way everywhere.

A chapter declares its experiments as :class:`Item` s (``register``). An item has

* a **config per profile**: ``config("paper")`` is a frozen dataclass with the paper's settings, read
  in one place; ``config("smoke")`` is derived from it (``.smoke()``), and so is the *probe* config
  (``.probe()``: the paper's shapes, a few steps) used by the plan's counts and the GPU preflight, and
  the *dry* config (the probe's ``.dry()`` where a config has one: the same shapes, one step of each
  loop; else the probe itself) that CI's dry run uses, where only whether every item runs matters;
* a **run** function ``run(job) -> payload`` (a dict of tables, numbers and arrays; no timings: a
  payload must be a deterministic function of the config and the code);
* its **loops** ``loops(cfg) -> [Loop]``: the training and evaluation loops it runs and how many steps
  each takes, from which the plan estimates its GPU time;
* **depends**: other items whose payloads it needs (a teacher's weights, a filled buffer), which are
  results too, so a dependent item can run in a later session on another machine;
* a **priority**, a **stage** (``first``: the first pass that covers every table and figure once;
  ``seeds``: more seeds; ``beyond``: rows beyond the paper) and whether it needs a GPU at the paper
  profile; ``reduction`` states what the paper profile cuts from the paper's settings and why;
* whether it is **resumable**: an item longer than one command that saves a machine-local checkpoint
  by time and, before its job's deadline, raises :class:`Incomplete` (``Job.boundary``: at an epoch's
  or task's end when the next one might not finish in time; the queue then starts it even when it
  cannot finish, and the next command of the same session continues it);
* the **data** it reads (dataset names of ``recollect.data``), so a GPU session carries only those;
* its **version**: the fingerprint of its smoke run, or, for an item the smoke profile does not run
  (the 24 larger rows of Table 5, say), that of its ``versioned_by`` twin: an item of the same code
  path that the smoke profile does run.

:func:`result` is what a notebook calls: at the smoke profile it runs the item (and what it depends on)
into the working cache; at the paper profile it only *reads* ``results/``: a notebook never trains at
the paper profile, and a missing result is a :class:`Missing` value that names the item and the command
that makes it, which every table and figure function passes through (:func:`needs_results`).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
import os
import pathlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .. import results as R
from ..cache import smoke_results_dir
from ..train import probe
from ..train.checkpoint import prior_seconds

__all__ = ["Item", "Loop", "step_cost", "loop_names", "Job", "Missing", "register", "registry", "get_item", "chapter_items", "run_item",
           "result", "fetch", "collect", "needs_results", "is_missing", "current_version", "smoke_record", "SMOKE_DIR",
           "CHAPTER_MODULES", "FINGERPRINT_ENV", "REHEARSAL_ENV", "Incomplete", "TIME_LIMIT_ENV", "StageMismatch", "verify_versions",
           "item_state", "item_states", "checkpoint_files", "renderable"]

#: chapter name -> module (the registry imports them all)
CHAPTER_MODULES = {
    "distortion": "recollect.experiments.distortion",
    "distill-mnist": "recollect.experiments.distill_mnist",
    "distill-omniglot": "recollect.experiments.distill_omniglot",
    "lifelong-omniglot": "recollect.experiments.lifelong_omniglot",
    "lifelong-cifar100": "recollect.experiments.lifelong_cifar",
}
#: smoke fingerprints (the versions of results): ``results/smoke/<chapter>.json``
SMOKE_DIR = "smoke"
#: set by ``python -m recollect smoke``: smoke runs record their fingerprints instead of checking them
FINGERPRINT_ENV = "RECOLLECT_WRITE_FINGERPRINTS"
#: tests of the queue: the paper profile runs the smoke configs (see :meth:`Item.cfg`)
REHEARSAL_ENV = "RECOLLECT_REHEARSAL"
#: profiles that run the paper's shapes for a few steps and store nothing
PROBES = ("probe", "dry")
STAGES = ("first", "seeds", "beyond")


@dataclass(frozen=True)
class Loop:
    """One loop of an item: ``name`` as its trainer ticks it (``recollect.train.probe``), ``steps``
    at the item's config, ``captured`` when each step replays a CUDA graph on a GPU.

    A probe runs a few steps of each loop; two fields say how a loop's per-step cost follows from
    the probe's when it is not simply its own:

    * ``like``: the loop costs what the probe measured for loop ``like`` (the lifelong runs' later
      tasks, which a two-task probe never reaches, cost what its second task did);
    * ``grows_from`` and ``growth``: the step grows linearly with the stream, ``growth`` units beyond
      the probe's, each unit costing the difference between this loop's probe step and loop
      ``grows_from``'s. A GEM step at task t >= 1 costs ``a + b t`` (a QP and the memory-gradient
      machinery from the second task on, one memory gradient per earlier task); the probe runs three
      tasks, so ``lifelong-later`` (task 2 onwards) costs ``c2 + (mean t - 2) (c2 - c1)``.
      Where the probe's FLOPs were counted, a CPU's estimate takes the difference in FLOPs instead
      (``step_cost``'s ``flops``).

    A third says when the probe's step is smaller than the real one:

    * ``work``: the real step's arithmetic as a multiple of the probe's counted step's (1: the same).
      The probe runs an item at its probe config, which may shrink what a step works on (the classical
      codecs' k-means: 1,024 images and a codebook of 2 in the probe's counted step, 50,000 images
      and codebooks up to 2^15 in the real run, whose arithmetic grows with images x codebook). A
      step then costs at least ``work`` times the probe step's arithmetic at the device's rate; its
      launches stay the probe's.

    See :func:`step_cost`."""
    name: str
    steps: int
    captured: bool = False
    like: str | None = None
    grows_from: str | None = None
    growth: float = 0.0
    work: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.work, (int, float)) and math.isfinite(self.work) and self.work > 0):
            raise ValueError(f"loop {self.name!r}: work must be a finite number > 0 (the real step's "
                             f"arithmetic over the probe's), got {self.work!r}")


def step_cost(loop: Loop, cost: Callable[[str], float], arithmetic: Callable[[str], float] | None = None,
              flops: Callable[[str], float] | None = None) -> float:
    """Seconds per step of ``loop`` given ``cost(name)``, the probe's seconds per step of a loop name
    (measured or counted), taken from its ``like`` loop and extrapolated along the stream for a
    growing loop (:class:`Loop`; a difference below zero, noise, counts as no growth).

    With ``flops(name)`` (the probe step's counted FLOPs) a growing loop is extrapolated in FLOPs and
    costed at its own measured seconds per FLOP: for arithmetic-bound steps (a CPU) the counted FLOPs
    of the probe's tasks grow exactly, where the difference of two timed steps of a few each is noise
    (a fused two-seed iCaRL stream on CIFAR-100 took 7 times such an estimate).

    A loop whose ``work`` is not 1 costs at least ``work x arithmetic(name)``, ``arithmetic`` giving
    the seconds of the probe step's FLOPs at the device's rate; without ``arithmetic`` such a loop
    has no estimate (``ValueError``: its probe step alone would understate it)."""
    name = loop.like or loop.name
    c = cost(name)
    if loop.grows_from is not None and loop.growth:
        f = flops(name) if flops is not None else 0.0
        if f and f > 0:
            c *= 1.0 + loop.growth * max(0.0, f - flops(loop.grows_from)) / f
        else:
            c += loop.growth * max(0.0, c - cost(loop.grows_from))
    if loop.work != 1:
        if arithmetic is None:
            raise ValueError(f"loop {loop.name!r} does {loop.work:.3g} times its probe step's arithmetic: "
                             f"its cost needs the counted FLOPs and a FLOP rate (`python -m recollect plan --count`)")
        c = max(c, loop.work * arithmetic(name))
    return c


def loop_names(loops) -> set:
    """Every loop name whose probe cost the estimate of ``loops`` reads."""
    return {l.like or l.name for l in loops} | {l.grows_from for l in loops if l.grows_from is not None}


@dataclass(frozen=True)
class Item:
    chapter: str
    name: str
    title: str
    config: Callable[[str], Any]
    run: Callable[["Job"], dict]
    loops: Callable[[Any], list]
    depends: tuple = ()
    priority: int = 100
    stage: str = "first"
    gpu: bool = True
    reduction: str = ""
    versioned_by: str | None = None
    #: False: an item of the smoke profile only (the smoke twin of paper items, which no table reads at
    #: the paper profile): the plan, the queue, the dry run and the status box leave it out
    paper: bool = True
    data: tuple = ()
    resumable: bool = False

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"item {self.key}: stage must be one of {STAGES}, got {self.stage!r}")
        if "/" in self.name or not self.name:
            raise ValueError(f"an item's name is one path segment, got {self.name!r}")

    @property
    def key(self) -> str:
        return f"{self.chapter}/{self.name}"

    def cfg(self, profile: str):
        """The config at ``profile`` (``smoke``, ``paper``, ``probe`` or ``dry``). In a queue rehearsal
        (``$RECOLLECT_REHEARSAL``, tests only) the paper profile is the smoke config, so the whole GPU
        path runs on a CPU in seconds; its results can never pass for paper results (other config)."""
        if profile == "probe":
            return self.cfg("paper").probe()
        if profile == "dry":
            pc = self.cfg("probe")
            return pc.dry() if hasattr(pc, "dry") else pc
        if profile == "paper" and os.environ.get(REHEARSAL_ENV):
            return self.config("smoke")
        return self.config(profile)

    def config_dict(self, profile: str) -> dict:
        return _as_dict(self.cfg(profile))


def _as_dict(cfg) -> dict:
    if dataclasses.is_dataclass(cfg):
        return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, canonical
    if isinstance(cfg, dict):
        return json.loads(json.dumps(cfg))
    raise TypeError(f"an item's config is a dataclass or a dict, got {type(cfg).__name__}")


_REGISTRY: dict[str, Item] = {}


def register(item: Item) -> Item:
    """Add ``item`` to the registry (a chapter module calls this at import)."""
    if item.key in _REGISTRY and _REGISTRY[item.key] is not item:
        raise ValueError(f"item {item.key} registered twice")
    _REGISTRY[item.key] = item
    return item


def registry() -> dict[str, Item]:
    """Every item of every chapter, by key, in book order."""
    for mod in CHAPTER_MODULES.values():
        importlib.import_module(mod)
    order = list(CHAPTER_MODULES)
    rank = lambda ch: order.index(ch) if ch in order else len(order)  # noqa: E731
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (rank(kv[1].chapter), kv[1].priority, kv[0])))


def paper_items() -> dict[str, Item]:
    """The items of the paper profile (:func:`registry` less the smoke-only ones), by key, in book order."""
    return {k: it for k, it in registry().items() if it.paper}


def get_item(key: str) -> Item:
    items = registry()
    if key not in items:
        raise ValueError(f"unknown item {key!r}; items: {', '.join(items)}")
    return items[key]


def chapter_items(chapter: str) -> list[Item]:
    if chapter not in CHAPTER_MODULES and not any(i.chapter == chapter for i in _REGISTRY.values()):
        raise ValueError(f"unknown chapter {chapter!r}; chapters: {', '.join(CHAPTER_MODULES)}")
    return [i for i in registry().values() if i.chapter == chapter]


# ------------------------------------------------------------------------------------------------
# a job: one item being run
# ------------------------------------------------------------------------------------------------
class Incomplete(RuntimeError):
    """A resumable item stopped at its job's deadline after saving its checkpoint: run it again (the
    same command, on the same machine) to continue."""


#: a resumable item stops at a boundary when the time left is under this many times its longest stretch
STOP_MARGIN = 1.25

#: seconds a command may run (e.g. 480 under a 10-minute limit): ``python -m recollect run`` gives its
#: jobs this deadline; the queue sets its own from its budget
TIME_LIMIT_ENV = "RECOLLECT_TIME_LIMIT"


@dataclass
class Job:
    """What an item's ``run`` receives: its config, the device, the payloads of what it depends on
    (``deps[key]``), a machine-local directory for checkpoints, whether to show progress bars, and a
    ``deadline`` (``time.monotonic()`` seconds) by which a resumable item saves and raises
    :class:`Incomplete`."""
    item: Item
    profile: str          # "smoke", "paper", "probe" or "dry"
    cfg: Any
    device: torch.device
    deps: dict = field(default_factory=dict)
    checkpoint_dir: pathlib.Path | None = None
    progress: bool = False
    deadline: float | None = None
    # the last boundary (or the job's start) and the longest stretch between two boundaries so far
    _mark: float = field(default_factory=time.monotonic, repr=False)
    _longest: float = field(default=0.0, repr=False)

    @property
    def smoke(self) -> bool:
        return self.profile == "smoke"

    def time_left(self) -> float | None:
        """Seconds until the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def boundary(self, ck, state_fn, generators: dict | None = None, *, last: bool = False, what: str = "") -> None:
        """Call at each natural boundary of a resumable item (an epoch, a task): saves a checkpoint by
        time (``ck.maybe_save``); and when the next stretch, if it takes as long as the longest so far
        (x ``STOP_MARGIN``), would end after the deadline, saves now and raises :class:`Incomplete` (the
        same command on the same machine continues from there). So an item stops *before* its
        deadline, not one stretch after it. ``last``: nothing follows, never stop. Without a
        checkpoint directory it never stops (the work would be lost)."""
        now = time.monotonic()
        self._longest = max(self._longest, now - self._mark)
        self._mark = now
        left = self.time_left()
        if not last and ck.enabled and left is not None and left < STOP_MARGIN * self._longest:
            ck.maybe_save(state_fn, generators, force=True)
            raise Incomplete(f"{what or self.item.key}: stopped {left:.0f} s before its deadline (the next stretch "
                             f"may take {self._longest:.0f} s) after saving a checkpoint; run it again on this "
                             "machine to continue")
        ck.maybe_save(state_fn, generators)

    def dep(self, key: str) -> dict:
        """The payload of dependency ``key`` (``"<chapter>/<name>"`` or a name of the same chapter)."""
        if "/" not in key:
            key = f"{self.item.chapter}/{key}"
        if key not in self.deps:
            raise ValueError(f"item {self.item.key} asked for {key!r}, which is not among its depends {self.item.depends}")
        return self.deps[key]


def _dep_keys(item: Item) -> list[str]:
    return [d if "/" in d else f"{item.chapter}/{d}" for d in item.depends]


def run_item(item: Item, profile: str, device, store: R.ResultStore | None, *, progress: bool = False,
             checkpoint_root: pathlib.Path | None = None, cfg=None, deadline: float | None = None,
             _memo: dict | None = None) -> R.Result:
    """Run ``item`` at ``profile`` (``smoke``, ``paper``, ``probe`` or ``dry``) on ``device``, its
    dependencies first (taken from ``store`` when there, else run and stored too), and store the result.

    ``probe`` runs the paper's shapes for a few steps and stores nothing (``store``, if given, only
    provides current paper results of dependencies); ``dry`` likewise, at one step per loop where the
    config says how (:meth:`Item.cfg`)."""
    memo = {} if _memo is None else _memo
    if item.key in memo:
        return memo[item.key]
    dev = torch.device(device)
    deps = {}
    for k in _dep_keys(item):
        dep = get_item(k)
        got = None
        if store is not None:
            # a probe uses the real paper result of a dependency when there is one
            p = "paper" if profile in PROBES else profile
            try:
                version = current_version(dep) if p == "paper" else None
            except ValueError:
                version = None
            got = store.get(k, dep.config_dict(p), version)
            if got is not None and (got.stale or (p == "smoke" and not _same_code(got))):
                got = None  # never build on a stale dependency (or a smoke one other code made): make it again
        if got is None:
            got = run_item(dep, profile, dev, store, progress=progress, checkpoint_root=checkpoint_root,
                           deadline=deadline, _memo=memo)
        deps[k] = got.payload
    cfg = item.cfg(profile) if cfg is None else cfg
    ck = None
    if checkpoint_root is not None:
        ck = pathlib.Path(checkpoint_root) / item.chapter / f"{item.name}-{R.config_hash(_as_dict(cfg))}"
    if deadline is None and os.environ.get(TIME_LIMIT_ENV) and profile != "smoke":
        deadline = time.monotonic() + float(os.environ[TIME_LIMIT_ENV])
    job = Job(item, profile, cfg, dev, deps, ck, progress, deadline)
    before = prior_seconds(ck)  # a resumed item: the seconds of its earlier commands
    _sync(dev)
    t0 = time.perf_counter()
    payload = item.run(job)
    _sync(dev)
    seconds = before + time.perf_counter() - t0
    if not isinstance(payload, dict):
        raise TypeError(f"item {item.key}: run must return a dict payload, got {type(payload).__name__}")
    version = current_version(item) if profile == "paper" else (R.fingerprint(payload) if profile == "smoke" else profile)
    res = R.Result(item.key, profile, _as_dict(cfg), version, R.provenance(dev, seconds), payload)
    if profile == "smoke":
        _smoke_fingerprint(item, res)
    if store is not None and profile not in PROBES:
        store.put(res)
        if ck is not None:
            for stale in checkpoint_files(ck.parent.parent, item):  # this config's and older configs'
                stale.unlink()
                stale.with_suffix(".seconds").unlink(missing_ok=True)
    memo[item.key] = res
    return res


def _same_code(res: R.Result) -> bool:
    """Was a cached smoke result made by the code running now (:func:`recollect.results.code_hash`)?"""
    return res.provenance.get("code") == R.code_hash()


def checkpoint_files(root, item: Item) -> list[pathlib.Path]:
    """The machine-local checkpoints of ``item`` under ``root`` (one per config it was started with:
    ``<chapter>/<name>-<config hash>.ckpt``), not those of items whose names merely start with its
    name (``gem-50`` is not ``gem-50-adam``)."""
    pat = re.compile(re.escape(item.name) + r"-[0-9a-f]{16}\.ckpt")
    d = pathlib.Path(root) / item.chapter
    return sorted(p for p in d.glob(f"{item.name}-*.ckpt") if pat.fullmatch(p.name)) if d.is_dir() else []


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------------------------------------
# versions: the smoke fingerprints
# ------------------------------------------------------------------------------------------------
def _smoke_file(chapter: str, root: pathlib.Path | None = None) -> pathlib.Path:
    return (root or R.results_dir()) / SMOKE_DIR / f"{chapter}.json"


@functools.lru_cache(maxsize=None)
def _smoke_records(path: str, mtime: float) -> dict:
    return json.loads(pathlib.Path(path).read_text())["items"]


def smoke_record(item: Item) -> dict | None:
    """The committed smoke record of ``item``: its fingerprint (``version``), config hash and the JSON
    part of its smoke payload (numbers the GPU preflight compares with)."""
    p = _smoke_file(item.chapter)
    if not p.exists():
        return None
    return _smoke_records(str(p), p.stat().st_mtime).get(item.name)


def current_version(item: Item) -> str:
    """The version a paper result of ``item`` must carry to be current: the committed smoke
    fingerprint of the item (or of its ``versioned_by`` twin). Raises when there is none (run
    ``make smoke``)."""
    if item.versioned_by is not None:
        item = get_item(item.versioned_by if "/" in item.versioned_by else f"{item.chapter}/{item.versioned_by}")
    rec = smoke_record(item)
    if rec is None:
        raise ValueError(f"item {item.key} has no smoke fingerprint in {_smoke_file(item.chapter).relative_to(R.ROOT)}; "
                         "regenerate the smoke copies with `make smoke`")
    return rec["version"]


class StageMismatch(RuntimeError):
    """A smoke run's fingerprint differs from the committed one."""


_CHECKED: dict[str, dict[str, bool]] = {}


def _smoke_fingerprint(item: Item, res: R.Result) -> None:
    """Record (``make smoke``) or check (every other smoke run) the item's fingerprint."""
    if os.environ.get(FINGERPRINT_ENV):
        p = _smoke_file(item.chapter)
        doc = json.loads(p.read_text()) if p.exists() else {"items": {}}
        doc["about"] = ("Smoke fingerprints (sha256 of each item's smoke payload under the portable CPU settings): "
                        "the version a paper result must carry to be current. Written by `make smoke`.")
        body = R.encode(res.payload, {})
        doc["items"][item.name] = {"version": res.version, "config_hash": res.config_hash, "payload": body}
        doc["items"] = dict(sorted(doc["items"].items()))
        R.atomic_write(p, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
        _CHECKED.setdefault(item.chapter, {})[item.name] = True
        return
    rec = smoke_record(item)
    _CHECKED.setdefault(item.chapter, {})[item.name] = rec is not None and rec["version"] == res.version


def verify_versions(chapter: str) -> str:
    """One line for a chapter's checked output: do the smoke runs of this process reproduce the
    committed fingerprints? (A change of behaviour that no printed number shows still shows here.)"""
    seen = _CHECKED.get(chapter, {})
    items = [i.name for i in chapter_items(chapter) if i.versioned_by is None]
    missing = [n for n in items if n not in seen]
    bad = sorted(n for n, ok in seen.items() if not ok)
    rel = f"results/{SMOKE_DIR}/{chapter}.json"
    if bad or missing:
        parts = []
        if bad:
            parts.append(f"changed: {', '.join(bad)}")
        if missing:
            parts.append(f"not run: {', '.join(missing)}")
        return (f"smoke fingerprints of {rel}: {'; '.join(parts)} -- if the change is intended, run `make smoke` "
                "(paper results of changed items become stale)")
    return f"smoke fingerprints: all {len(items)} items of this chapter reproduce {rel}"


# ------------------------------------------------------------------------------------------------
# what notebooks call
# ------------------------------------------------------------------------------------------------
class Missing:
    """A result that is not there (or is stale) at the paper profile: shown as a clear message; every
    function decorated with :func:`needs_results` returns it unchanged when given one."""

    def __init__(self, items: list[str], why: str = "missing", command: str | None = None):
        self.items = list(items)
        self.why = why
        self.command = command or "python -m recollect gpu-queue --budget 540 --out $OUT   (on a GPU machine; README: a GPU session)"

    def message(self) -> str:
        what = "not yet made at the paper profile" if self.why == "missing" else "stale (made by older code)"
        return (f"Result {', '.join(self.items)} is {what}. Make it with: {self.command}; "
                "`python -m recollect plan` lists every item and its state.")

    def __repr__(self):
        return self.message()

    def _repr_html_(self):
        import html

        return f'<div class="admonition warning"><p class="admonition-title">Not available</p><p>{html.escape(self.message())}</p></div>'

    def __bool__(self):
        return False


def is_missing(*values) -> Missing | None:
    for v in values:
        if isinstance(v, Missing):
            return v
    return None


def needs_results(fn):
    """Decorator: if any argument is :class:`Missing`, return it instead of calling ``fn``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        m = is_missing(*args, *kwargs.values())
        if m is not None:
            return m
        return fn(*args, **kwargs)
    return wrapper


def _with_seeds(cfg, seeds):
    """``cfg`` with the notebook's seeds (``context(seeds=...)``) where the config has seeds."""
    if seeds is None or not dataclasses.is_dataclass(cfg):
        return cfg
    names = {f.name for f in dataclasses.fields(cfg)}
    if "seeds" in names:
        return dataclasses.replace(cfg, seeds=tuple(int(s) for s in seeds))
    if "seed" in names:
        return dataclasses.replace(cfg, seed=int(seeds[0]))
    return cfg


def fetch(ctx, key: str) -> R.Result | Missing:
    """The :class:`~recollect.results.Result` of item ``key`` at ``ctx``'s profile.

    smoke: from the working cache when the same code made it (:func:`recollect.results.code_hash`),
    else run now (with what it depends on). paper: from ``results/``
    only; when absent, of another config or stale, a :class:`Missing` (a stale payload is never shown
    as current). Every result fetched is recorded in ``ctx.seen`` (for the chapter's status and
    provenance), and a second fetch of the same key in one rendering is answered from there."""
    prev = ctx.seen.get(key)
    if prev is not None:
        if isinstance(prev, R.Result) and prev.stale:
            return Missing([key], why="stale")
        return prev
    item = get_item(key)
    if ctx.profile == "smoke":
        cfg = _with_seeds(item.cfg("smoke"), ctx.seeds_given)
        store = R.ResultStore(smoke_results_dir())
        got = store.get(key, _as_dict(cfg))
        if got is not None and not _same_code(got):
            got = None  # made by other code: its fingerprint would check nothing; run it again
        if got is not None:
            if key not in _CHECKED.get(item.chapter, {}) and item.versioned_by is None:
                _smoke_fingerprint(item, got)
        else:
            got = run_item(item, "smoke", ctx.device, store, cfg=cfg)
        ctx.seen[key] = got
        return got
    cfg = _with_seeds(item.cfg("paper"), ctx.seeds_given)
    got = R.ResultStore().get(key, _as_dict(cfg), current_version(item))
    ctx.seen[key] = got if got is not None else Missing([key])
    if got is None:
        return Missing([key])
    if got.stale:
        return Missing([key], why="stale")
    return got


def result(ctx, key: str) -> dict | Missing:
    """The payload of item ``key`` at ``ctx``'s profile (:func:`fetch`), or a :class:`Missing`."""
    got = fetch(ctx, key)
    return got if isinstance(got, Missing) else got.payload


def collect(ctx, keys) -> tuple[dict, list]:
    """``({key: payload}, [keys missing or stale])`` for several items (tables built from many)."""
    got, missing = {}, []
    for k in keys:
        r = fetch(ctx, k)
        if isinstance(r, Missing):
            missing.extend(r.items)
        else:
            got[k] = r.payload
    return got, missing


# ------------------------------------------------------------------------------------------------
# a chapter's state
# ------------------------------------------------------------------------------------------------
def item_state(item: Item, store: R.ResultStore | None = None) -> tuple[str, R.Result | None]:
    """``(state, result)`` of ``item``'s paper-profile result in ``store`` (``results/`` by default):
    ``done`` (current), ``stale`` (older code or settings), ``missing``, or ``unversioned`` (the item
    has no smoke fingerprint yet, so no result of it can be current: run ``make smoke``). The result
    is read without its payload (None): a state needs no arrays."""
    store = store if store is not None else R.ResultStore()
    try:
        version = current_version(item)
    except ValueError:
        return "unversioned", None
    got = store.get(item.key, item.config_dict("paper"), version, payload=False)
    if got is None:
        return "missing", None
    return ("stale" if got.stale else "done"), got


def item_states(chapter: str) -> list[dict]:
    """Every paper-profile item of ``chapter`` with its state in ``results/`` (:func:`item_state`) and,
    when made, the date, device, whether that device was a GPU (``on_gpu``) and the seconds."""
    store = R.ResultStore()
    out = []
    for it in chapter_items(chapter):
        if not it.paper:
            continue
        state, got = item_state(it, store)
        st = {"state": state}
        if got is not None:
            st.update(date=got.provenance.get("date", ""), device=got.provenance.get("device", ""),
                      on_gpu=got.provenance.get("gpu") is not None, seconds=got.provenance.get("seconds", 0.0))
        out.append(dict(item=it.key, name=it.name, title=it.title, stage=it.stage, gpu=it.gpu, **st))
    return out


def renderable(chapter: str, states: list[dict] | None = None) -> bool:
    """Is ``chapter`` rendered at the paper profile? Once one of the items the plan gives a GPU has a
    current result (made on a GPU or not): until then its book copy keeps the smoke rendering, which
    says so at its top (the CPU-only items alone, JPEG for example, make no chapter)."""
    states = item_states(chapter) if states is None else states
    return any(s["state"] == "done" and s["gpu"] for s in states)
