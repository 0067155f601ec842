"""Chapter "lifelong learning on Omniglot": paper section 5.2 (its Omniglot paragraph), appendix A.4.

Fifty alphabets learned as fifty tasks, in order, in a single pass, by a ResNet-18 (GEM's reduced one,
one input channel, 1,623 outputs with task masks), under an incremental storage budget of N full 28x28
examples (``recollect.train.lifelong``):

* the paper's rows (``recollect.paper.OMNIGLOT_LIFELONG``), one example at a time: online (no
  buffer); rehearsal with a lossless buffer of N = 10 and N = 50 images (1 and 3 gradient steps per
  example at 50); the recollection generator, a categorical autoencoder of 62 (N = 10) or 312
  (N = 50) two-way variables whose codes fill the same bits (1 and 3 steps at 50);
* beyond the paper: GEM and iCaRL at both budgets, as their authors ran them on CIFAR-100
  (``recollect.train.lifelong.AS_PUBLISHED``: GEM's code has no Omniglot setting, so its CIFAR-100
  values are carried over: plain SGD, GEM at lr 0.1 with margin 0.5, iCaRL at lr 1, batches of 10
  incoming examples); where they cannot run, the row says why. ``gem-50-adam``: GEM with this
  harness's optimizer (Adam at 1e-3, one example per step), labelled as not the published method;
* beyond the paper: the single-head variant (``SINGLE_HEAD``): the paper's seven rows trained without
  task masks (``train_mask="none"``, softmax over all 1,623 outputs), seed 0, the test of which
  accuracy the paper reports (:func:`measure_fit`: the task-aware accuracy of the task-masked
  models against the class-incremental accuracy of the single-head ones).

Items (``recollect.experiments.items``; at the paper profile each a result in
``results/lifelong-omniglot/``), one per fused run (``fuse_groups``: the 1-step online, rehearsal and
recollection rows share one network and schedule, the two 3-step rows another; GEM and iCaRL run
alone):

* stage ``first`` (the first pass: every row of the paper once): ``fused-1step-s0`` and
  ``fused-3step-s0``, seed 0;
* stage ``seeds``: ``fused-1step-s1-4`` and ``fused-3step-s1-4``, the paper profile's other four seeds;
* stage ``beyond``: ``gem-10``, ``gem-50``, ``icarl-10``, ``icarl-50``, ``gem-50-adam`` at all five
  seeds (the ones that cannot run at the paper's budgets need no GPU: their result is the reason),
  and ``single-head-1step-s0``, ``single-head-3step-s0``.

Tables read the payloads (:func:`run_rows`, :func:`single_head_rows`, :func:`accuracy_curves`); the
storage accounting (:func:`storage_table`) needs no training. The figures are in
``recollect.figures`` (``lifelong_omniglot_*``), the claims in ``recollect.claims.lifelong_omniglot``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .. import accounting, data, paper
from ..train.lifelong import LifelongConfig, plan_storage
from ..utils import threads
from . import lifelong_common as L
from .items import Item, Missing, get_item, needs_results, register

__all__ = ["BAND", "NAME", "CHAPTER", "PAPER_BUDGETS", "ROWS", "PAPER_ROWS", "BEYOND_ROWS", "OmniglotRun", "PAPER",
           "FACTS", "SMOKE_SEEDS", "stream", "rows", "row_configs", "settings", "items_table", "item_keys",
           "storage_table", "chance", "chance_line", "run_rows", "accuracy_curves", "compare_rows", "no_verdicts",
           "measure_fit", "measure_rows", "transfer_table", "aggregate", "BASELINE_ROWS", "SINGLE_HEAD",
           "single_head_rows", "PROBE_BATCHED_EXAMPLES", "RUN_WITH", "READINGS"]

NAME = CHAPTER = "lifelong-omniglot"
#: Tolerance band of the verdicts, in accuracy points (absolute): agrees within 2, close within 4.
BAND = 2.0
PAPER_BUDGETS = (10, 50)
#: the paper profile's stream (omniglot_tasks(0.9, seed 0)), for accounting without the dataset;
#: tests/test_lifelong_omniglot.py checks these against the data
FACTS = {"tasks": 50, "classes": 1623, "train_images": 29214, "test_images": 3246, "max_train_per_task": 990,
         "train_sizes": (360, 522, 468, 738, 720, 432, 828, 252, 468, 612, 594, 396, 468, 774, 432, 864, 396, 288, 936,
                         846, 720, 468, 720, 738, 594, 252, 756, 414, 306, 990, 360, 468, 468, 468, 468, 468, 810, 810,
                         738, 468, 846, 720, 540, 810, 828, 504, 414, 450, 756, 468)}
#: the smoke profile fuses two seeds in every run (the fusion of seeds is then exercised)
SMOKE_SEEDS = (0, 1)
#: seeds of the paper profile: the first pass runs the first, the seeds stage the rest
PAPER_SEEDS = (0, 1, 2, 3, 4)
#: the probe's incoming examples per task (``lifelong_common``: both chapters probe alike)
PROBE_EXAMPLES, PROBE_BATCHED_EXAMPLES = L.PROBE_EXAMPLES, L.PROBE_BATCHED_EXAMPLES

#: row key -> (method, index into the budgets (None: online), gradient steps per example)
ROWS = {
    "online": ("online", None, 1),
    "rehearsal-10": ("rehearsal", 0, 1), "recollection-10": ("recollection", 0, 1),
    "rehearsal-50": ("rehearsal", 1, 1), "rehearsal-50-x3": ("rehearsal", 1, 3),
    "recollection-50": ("recollection", 1, 1), "recollection-50-x3": ("recollection", 1, 3),
    "gem-10": ("gem", 0, 1), "gem-50": ("gem", 1, 1), "icarl-10": ("icarl", 0, 1), "icarl-50": ("icarl", 1, 1),
    "gem-50-adam": ("gem", 1, 1),
}
PAPER_ROWS = tuple(list(ROWS)[:7])
BEYOND_ROWS = tuple(list(ROWS)[7:])
#: GEM and iCaRL: as published (``AS_PUBLISHED``, GEM's CIFAR-100 values carried over) or with this
#: harness's optimizer (``-adam``)
BASELINE_ROWS = {"gem-10": "published", "gem-50": "published", "icarl-10": "published", "icarl-50": "published",
                 "gem-50-adam": "harness"}
#: the single-head variant of the paper's rows (no task masks in training): item name -> rows, seed 0
SINGLE_HEAD = {"single-head-1step-s0": tuple(k for k in PAPER_ROWS if ROWS[k][2] == 1),
               "single-head-3step-s0": tuple(k for k in PAPER_ROWS if ROWS[k][2] == 3)}
#: single-head items the smoke profile does not run (the chapter's 60 s): versioned by the task-masked run of
#: the same rows (the same fused code path; ``single-head-1step-s0`` runs the single-head one at smoke)
SINGLE_HEAD_TWIN = {"single-head-3step-s0": "fused-3step-s0"}
#: the column of the tables that says what a row ran with (issue 15)
RUN_WITH = L.RUN_WITH


# ------------------------------------------------------------------------------------------------
# configuration: the paper profile in one place; smoke and probe derived from it
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OmniglotRun(L.HarnessRun):
    """One fused run of the lifelong harness on Omniglot: the rows ``rows`` (keys of :data:`ROWS`)
    at the seeds ``run_seeds``.

    Paper profile (section 5.2, appendix A.4): all 50 alphabets, 90 % of each character's drawers for
    training and 10 % for testing (``data.omniglot_tasks``: 29,214 training, 3,246 test images), GEM's
    reduced ResNet-18 (nf = 20) with task masks (``train_mask="none"``: the single-head variant),
    budgets of 10 and 50 full examples, autoencoders of (62, 2) and (312, 2) (A.4), 10 buffer items
    replayed per gradient step, Adam at 1e-3 for the reasoning model (A.4's rate; the optimizer is
    ours) and for the autoencoder (the paper gives no autoencoder rate for Omniglot). GEM and iCaRL as
    their authors ran them on CIFAR-100 (``gem_*``, ``icarl_*``: ``AS_PUBLISHED``, carried over: GEM's
    code has no Omniglot setting); ``gem-50-adam`` with the profile's ``optimizer`` and ``lr``, one
    example per step."""
    rows: tuple = ()
    run_seeds: tuple = (0,)
    train_fraction: float = 0.9
    split_seed: int = 0
    ae_lr: float = 1e-3
    budgets: tuple = PAPER_BUDGETS
    codes: tuple = tuple(tuple(paper.OMNIGLOT_LIFELONG_GENERATORS[b]) for b in PAPER_BUDGETS)

    def smoke(self) -> "OmniglotRun":
        """Today's smoke sizes: 4 alphabets, their first 12 training examples (GEM as published: a
        batch of 10 and one of 2 per alphabet), one test image per character, nf = 2, budgets 2 and 10
        (like the paper's, the small one below the number of tasks), autoencoders (16, 2) and (32, 2),
        5 items per step, seeds 0 and 1 fused, one CPU thread (tiny operations on a loaded 2-core
        machine run far slower on two). Four alphabets, not five, keep the chapter within its minute
        with the single-head run and the harness-optimizer GEM."""
        return replace(self, tasks=4, train_per_task=12, test_per_class=1, nf=2, replay=5, budgets=(2, 10),
                       codes=((16, 2), (32, 2)), run_seeds=SMOKE_SEEDS, threads=1)

    def probe(self) -> "OmniglotRun":
        """:meth:`HarnessRun.probe <recollect.experiments.lifelong_common.HarnessRun.probe>` (GEM keeps
        the paper's budget // 50 memories per alphabet). A run that cannot run at the paper's budgets
        is its own probe (it returns at once)."""
        return super().probe() if self.runnable() else self

    def row_configs(self) -> list:
        return row_configs(self)

    def gem_memories(self) -> tuple:
        return tuple(b // (self.tasks or FACTS["tasks"]) for b in self.budgets)

    def with_gem_memories(self, per: tuple, tasks: int) -> "OmniglotRun":
        return replace(self, budgets=tuple(p * tasks for p in per))

    def runnable(self) -> bool:
        """Whether any of the rows can run at the paper profile's stream (accounting only)."""
        return any(p.runnable for p in _plans(self, FACTS["tasks"], FACTS["classes"]))


#: the paper profile, read in one place
PAPER = OmniglotRun()


def stream(cfg: OmniglotRun):
    """The task stream of ``cfg``: Omniglot's 50 alphabets (or a subset). Built once per process and
    setting (do not modify the returned tensors)."""
    return _stream(cfg.train_fraction, cfg.split_seed, cfg.tasks, cfg.train_per_task, cfg.test_per_class)


@functools.lru_cache(maxsize=2)
def _stream(train_fraction, split_seed, tasks, train_per_task, test_per_class):
    st = data.omniglot_tasks(train_fraction=train_fraction, seed=split_seed)
    if tasks is not None or train_per_task is not None or test_per_class is not None:
        st = st.subset(train_per_task=train_per_task, test_per_class=test_per_class, tasks=tasks)
    return st


def _facts(cfg: OmniglotRun) -> dict:
    """Tasks, classes and images of ``cfg``'s stream (:func:`lifelong_common.run_facts`)."""
    return L.run_facts(cfg, FACTS, stream)


def rows(cfg: OmniglotRun, keys=None) -> list[dict]:
    """The rows of ``cfg`` (or the rows ``keys`` at ``cfg``'s settings): ``key``, ``method``,
    ``budget`` (the profile's), ``paper_budget`` (the paper's budget the row stands for), ``steps``,
    ``code``, ``paper`` (the paper's retention, or None), ``beyond`` (not in the paper),
    ``baseline`` (GEM and iCaRL: ``published`` or ``harness``; None otherwise) and ``heads``
    (``task masks`` or ``single head``: ``cfg.train_mask``)."""
    out = []
    for key in (cfg.rows if keys is None else keys):
        method, b, steps = ROWS[key]
        budget = 0 if b is None else cfg.budgets[b]
        pb = 0 if b is None else PAPER_BUDGETS[b]
        ref = (method, PAPER_BUDGETS[0] if b is None else pb, steps)
        out.append(dict(key=key, method=method, budget=budget, paper_budget=pb, steps=steps,
                        code=tuple(cfg.codes[b]) if method == "recollection" else None,
                        paper=paper.OMNIGLOT_LIFELONG.get(ref), beyond=key in BEYOND_ROWS,
                        baseline=BASELINE_ROWS.get(key),
                        heads="task masks" if cfg.train_mask == "task" else "single head"))
    return out


def _label(r: dict) -> str:
    heads = ", single head" if r.get("heads") == "single head" else ""
    if r["method"] == "online":
        return "online" + heads
    code = f", ({r['code'][0]}, {r['code'][1]}) code" if r["code"] else ""
    name = {"gem": "GEM", "icarl": "iCaRL"}.get(r["method"], r["method"])
    if r.get("baseline"):
        note = L.PUBLISHED_NOTE if r["baseline"] == "published" else L.HARNESS_NOTE
        return f"{name}, budget {r['budget']}, {note}"
    return f"{name}, budget {r['budget']}{code}, {r['steps']} step{'s' if r['steps'] > 1 else ''}{heads}"


def row_configs(cfg: OmniglotRun, keys=None) -> list[LifelongConfig]:
    """A :class:`LifelongConfig` per row of :func:`rows`. GEM and iCaRL as published take ``cfg.gem_*``
    / ``cfg.icarl_*`` (``AS_PUBLISHED``); ``gem-50-adam`` and the paper's rows the profile's
    ``optimizer`` and ``lr``, one example per step."""
    out = []
    for r in rows(cfg, keys):
        kw = dict(optimizer=cfg.optimizer, lr=cfg.lr)
        if r["baseline"] == "published" and r["method"] == "gem":
            kw.update(optimizer=cfg.gem_optimizer, lr=cfg.gem_lr, batch=cfg.gem_batch)
        if r["baseline"] == "published" and r["method"] == "icarl":
            kw.update(optimizer=cfg.icarl_optimizer, lr=cfg.icarl_lr, batch=cfg.icarl_batch,
                      icarl_distill=cfg.icarl_distill, icarl_features=cfg.icarl_features)
        out.append(LifelongConfig(
            method=r["method"], budget=r["budget"], steps=r["steps"], replay=cfg.replay, model=cfg.model,
            model_kwargs={"nf": cfg.nf}, code=r["code"], ae_lr=cfg.ae_lr, ae_replay=cfg.ae_replay,
            gem_margin=cfg.gem_margin, icarl_reg=cfg.icarl_reg, train_mask=cfg.train_mask,
            eval_batch=cfg.eval_batch, **kw))
    return out


def _plans(cfg: OmniglotRun, tasks: int, classes: int, keys=None, task_images: int | None = None) -> list:
    return [plan_storage(c, (1, 28, 28), tasks, classes, task_images=task_images) for c in row_configs(cfg, keys)]


# ------------------------------------------------------------------------------------------------
# the items
# ------------------------------------------------------------------------------------------------
def _run(job) -> dict:
    """One fused run (module docstring); the payload of ``lifelong_common.payload_of``."""
    cfg = job.cfg
    with threads(cfg.threads):
        st = stream(cfg)
    cfgs = row_configs(cfg)
    desc = "+".join(dict.fromkeys(c.method for c in cfgs)) + f" x{cfgs[0].steps} {L.seed_tag(cfg.run_seeds)}"
    return L.run_fused(job, st, cfgs, cfg.run_seeds, desc=desc, n_threads=cfg.threads)


def _loops(cfg: OmniglotRun) -> list:
    f = _facts(cfg)
    ok = any(p.runnable for p in _plans(cfg, f["tasks"], f["classes"]))
    cfgs = row_configs(cfg)
    return L.lifelong_loops({ROWS[k][0] for k in cfg.rows}, ok, f["train_sizes"], f["test_images"], f["tasks"],
                            cfg.eval_batch, cfgs[0].batch if cfgs else 1, grows=L.grows_with_tasks(cfgs))


FIRST_SEEDS = PAPER_SEEDS[:1]
MORE_SEEDS = PAPER_SEEDS[1:]
FUSED = {"1step": tuple(k for k in PAPER_ROWS if ROWS[k][2] == 1),
         "3step": tuple(k for k in PAPER_ROWS if ROWS[k][2] == 3)}


def _register_all():
    prio = 10
    for seeds, stage in ((FIRST_SEEDS, "first"), (MORE_SEEDS, "seeds")):
        for tag, keys in FUSED.items():
            name = f"fused-{tag}-{L.seed_tag(seeds)}"
            first = stage == "first"
            base = replace(PAPER, rows=keys, run_seeds=seeds)
            red = (f"first pass: seed {seeds[0]} of the paper profile's {len(PAPER_SEEDS)} (every row of the paper "
                   f"once); seeds {L.seed_tag(MORE_SEEDS)[1:]} follow in fused-{tag}-{L.seed_tag(MORE_SEEDS)}"
                   if first else "")
            register(Item(CHAPTER, name, f"Omniglot {', '.join(keys)} (fused, seeds {', '.join(map(str, seeds))})",
                          config=lambda p, base=base: base if p == "paper" else base.smoke(), run=_run, loops=_loops,
                          priority=prio, stage=stage, reduction=red,
                          versioned_by=None if first else f"fused-{tag}-{L.seed_tag(FIRST_SEEDS)}", data=("omniglot",),
                          resumable=True))
            prio += 1
    prio = 30
    for key in BEYOND_ROWS:
        base = replace(PAPER, rows=(key,), run_seeds=PAPER_SEEDS)
        ok = base.runnable()
        register(Item(CHAPTER, key, f"beyond the paper: {key} (seeds {', '.join(map(str, PAPER_SEEDS))})",
                      config=lambda p, base=base: base if p == "paper" else base.smoke(), run=_run, loops=_loops,
                      priority=prio, stage="beyond", gpu=ok, data=("omniglot",), resumable=ok,
                      reduction="" if ok else "cannot run at the paper's budget: its result is the reason (no GPU)"))
        prio += 1
    prio = 40
    for name, keys in SINGLE_HEAD.items():
        # the smoke profile runs the item's own seed (one group per row: half the smoke time of two seeds)
        base = replace(PAPER, rows=keys, run_seeds=FIRST_SEEDS, train_mask="none")
        register(Item(CHAPTER, name, f"beyond the paper: {', '.join(keys)} trained without task masks (single head), "
                                     f"seed {FIRST_SEEDS[0]}: which accuracy the paper reports",
                      config=lambda p, base=base: base if p == "paper" else replace(base.smoke(),
                                                                                    run_seeds=FIRST_SEEDS),
                      run=_run, loops=_loops,
                      priority=prio, stage="beyond", data=("omniglot",), versioned_by=SINGLE_HEAD_TWIN.get(name),
                      resumable=True,
                      reduction=(f"seed {FIRST_SEEDS[0]} only (of the paper profile's {len(PAPER_SEEDS)}): a test of "
                                 "which accuracy the paper reports, not a row of the paper")))
        prio += 1


_register_all()


def item_keys(single_head: bool = True) -> list[str]:
    """Every item of the chapter, in the order the tables use them (``single_head=False``: without
    the single-head variant, the items of :func:`run_rows`)."""
    names = ([f"fused-{t}-{L.seed_tag(s)}" for s in (FIRST_SEEDS, MORE_SEEDS) for t in FUSED] + list(BEYOND_ROWS)
             + (list(SINGLE_HEAD) if single_head else []))
    return [f"{CHAPTER}/{n}" for n in names]


def _items(ctx, which: str = "masked") -> list:
    """The items this rendering uses: ``masked`` (the paper's rows, GEM and iCaRL), ``single`` (the
    single-head variant) or ``all``."""
    keys = item_keys()
    if which == "masked":
        keys = item_keys(single_head=False)
    elif which == "single":
        keys = [f"{CHAPTER}/{n}" for n in SINGLE_HEAD]
    return L.select_items(ctx, [get_item(k) for k in keys])


# ------------------------------------------------------------------------------------------------
# settings and accounting (no training)
# ------------------------------------------------------------------------------------------------
def _cfg(ctx) -> OmniglotRun:
    """The chapter's settings at ``ctx``'s profile (every row, the first run's seeds)."""
    base = replace(PAPER, rows=tuple(ROWS))
    return base if not ctx.smoke else base.smoke()


def settings(ctx) -> pd.DataFrame:
    """The chapter's settings at ``ctx``'s profile, one row per aspect; the row counts come from
    :func:`rows` (not written by hand)."""
    c = _cfg(ctx)
    its = _items(ctx, "all")
    seeds = sorted({s for it in its for s in it.cfg(ctx.profile).run_seeds})
    if c.full:
        stream_s = "all 50 alphabets, 29,214 training and 3,246 test images (18 and 2 drawers per character)"
    else:
        stream_s = (f"the first {c.tasks} alphabets, their first {c.train_per_task} training examples, "
                    f"{c.test_per_class} test image per character")
    paper_rows, beyond = [r for r in rows(c) if not r["beyond"]], [r for r in rows(c) if r["beyond"]]
    per_stage = {s: sum(it.stage == s for it in its) for s in ("first", "seeds", "beyond")}
    opt, lr = c.optimizer.title(), L.lr_text
    gem, icarl = row_configs(c, ["gem-50", "icarl-50"])
    return pd.DataFrame([{"setting": k, "value": v} for k, v in [
        ("stream", stream_s + "; one pass"),
        ("reasoning model", f"GEM's ResNet-18, nf = {c.nf}, 1,623 outputs, task masks; {opt} at lr {lr(c.lr)} (A.4) "
                            "for the paper's rows"),
        ("per incoming example", f"1 or 3 gradient steps, each on the example and {c.replay} items drawn from "
                                 "the buffer (the paper's rows)"),
        ("budgets (full examples)", f"{c.budgets[0]} and {c.budgets[1]} (the paper's {PAPER_BUDGETS[0]} and "
                                    f"{PAPER_BUDGETS[1]})"),
        ("recollection generator", f"codes {c.codes[0]} and {c.codes[1]}, {opt} at lr {lr(c.ae_lr)} (the paper "
                                   "gives none)"),
        ("GEM, as published", f"{L.optimizer_text(gem)}; budget // {_facts(c)['tasks']} memories per alphabet "
                              "(GEM's CIFAR-100 values, carried over: GEM's code has no Omniglot setting)"),
        ("iCaRL, as published", f"{L.optimizer_text(icarl)} (GEM's CIFAR-100 values, carried over)"),
        ("GEM, " + L.HARNESS_NOTE, f"{opt} at lr {lr(c.lr)}, one example per step, budget {c.budgets[1]}"),
        ("single-head variant", f"the paper's {len(paper_rows)} rows trained without task masks (softmax over all "
                                f"1,623 outputs), seed {FIRST_SEEDS[0]}: which accuracy the paper reports"),
        ("rows", f"{len(paper_rows)} of the paper and {len(beyond)} beyond it "
                 f"({len(paper_rows) + len(beyond)} in all), and the paper's {len(paper_rows)} with a single head"),
        ("seeds", ", ".join(map(str, seeds)) + (" (fused in every run)" if ctx.smoke
                                                else "; the first pass runs seed 0")),
        ("items", f"{len(its)}: {per_stage['first']} first pass, {per_stage['seeds']} more seeds, "
                  f"{per_stage['beyond']} beyond the paper"),
    ]])


def items_table() -> pd.DataFrame:
    """The chapter's items at the paper profile: stage, seeds, dependencies, reductions."""
    return L.items_table(item_keys(), lambda cfg: cfg.run_seeds)


def storage_table(ctx) -> pd.DataFrame:
    """What every 1-step row stores within its budget (section 3.1's incremental constraint), and
    what it holds beyond that while an alphabet runs (``task_images``: iCaRL keeps the whole current
    alphabet until it ends, GEM on batches of 10 the rest of its incoming batch), with the peak."""
    c = _cfg(ctx)
    f = _facts(c)
    out = []
    for r, cf, p in zip(rows(c), row_configs(c),
                        _plans(c, f["tasks"], f["classes"], task_images=f["max_train_per_task"])):
        if r["steps"] > 1:
            continue
        out.append(L.storage_row(_label(r), "budget (full examples)", r["budget"], p,
                                 L.memory_text(cf, vars(p), f["tasks"], f["max_train_per_task"])))
    df = pd.DataFrame(out).drop(columns="autoencoder bits")
    for col in ("bits used", "held while a task runs", "peak bits"):
        df[col] = df[col].astype("Int64")
    return df


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------
def _payloads(ctx, which: str = "masked"):
    """``([(item, cfg, payload)], missing)`` of the items this rendering uses (``which``: :func:`_items`)."""
    return L.payloads(ctx, _items(ctx, which))


def chance(ctx) -> dict | Missing:
    """Accuracy of a uniform guess (%): task-aware (mean over tasks of 100 / classes of the task)
    and class-incremental (100 / all outputs), from the stream facts a result carries."""
    runs, missing = _payloads(ctx)
    if not runs:
        return Missing(missing)
    f = runs[0][2]["stream"]
    return {"task-aware": float(np.mean([100.0 / n for n in f["classes_per_task"]])),
            "class-incremental": 100.0 / f["outputs"], "tasks": f["tasks"]}


@needs_results
def chance_line(ch: dict) -> str:
    return (f"accuracy of a uniform guess on this stream: task-aware {ch['task-aware']:.2f} % (mean over the "
            f"{ch['tasks']} alphabets of 100 / characters), class-incremental {ch['class-incremental']:.3f} %")


def _fields(it, cfg, r) -> dict:
    return {"item": it.name, "key": r["key"], "row": _label(r), "method": r["method"], "budget": r["budget"],
            "steps": r["steps"], "paper_budget": r["paper_budget"], "paper": r["paper"], "beyond": r["beyond"],
            "baseline": r["baseline"], "heads": r["heads"]}


def _rows_of(runs, missing) -> pd.DataFrame:
    df = pd.DataFrame(L.run_records(runs, rows, _fields))
    order = {k: i for i, k in enumerate(ROWS)}
    df = df.sort_values(["key", "seed"], key=lambda s: s.map(order) if s.name == "key" else s, kind="stable")
    df = df.reset_index(drop=True)
    df.attrs["missing"] = list(missing)
    return df


def run_rows(ctx) -> pd.DataFrame | Missing:
    """One row per (method row, seed) of the task-masked runs (the paper's rows, GEM and iCaRL): ACC
    (retention), BWT, FWT, LA, task-aware (``_task``) and class-incremental (``_class``), with the
    storage, the optimizer, the memory and the paper's number. At the paper profile, the rows of items
    not yet made are left out (``attrs["missing"]``)."""
    runs, missing = _payloads(ctx)
    if not runs:
        return Missing(missing)
    return _rows_of(runs, missing)


def single_head_rows(ctx) -> pd.DataFrame | Missing:
    """The same as :func:`run_rows` for the single-head variant (the paper's rows trained without task
    masks, ``SINGLE_HEAD``); a :class:`Missing` until both of its items are made."""
    runs, missing = _payloads(ctx, "single")
    if missing or not runs:
        return Missing(missing)
    return _rows_of(runs, missing)


def accuracy_curves(ctx) -> pd.DataFrame | Missing:
    """The accuracy matrices as a tidy table: row, seed, ``after`` (tasks learned, 0 = random init),
    ``task``, ``task_aware`` and ``class_incremental`` accuracy (%)."""
    runs, missing = _payloads(ctx)
    if not runs:
        return Missing(missing)
    out = []
    for it, cfg, pl in runs:
        for r, res in zip(rows(cfg), L.results_of(pl)):
            if res.runnable:
                out.append(res.curves(row=_label(r), key=r["key"], method=r["method"], budget=r["budget"],
                                      steps=r["steps"]))
    order = {k: i for i, k in enumerate(ROWS)}
    df = pd.concat(out, ignore_index=True)
    return df.sort_values(["key", "seed", "after", "task"], key=lambda s: s.map(order) if s.name == "key" else s,
                          kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# tables (the claims: recollect.claims.lifelong_omniglot)
# ------------------------------------------------------------------------------------------------
def aggregate(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Mean, sd (ddof=1; 0 for one run) and number of runs of column ``col`` of :func:`run_rows` per
    method row, in the rows' order, with what the row is (key, method, budget, steps, the paper's
    number, beyond the paper, runnable and why not, optimizer, memory)."""
    return L.aggregate(df, "row", col, ("key", "method", "baseline", "budget", "steps", "paper", "beyond",
                                        "runnable", "reason", "optimizer", "memory"))


def _no_verdict(r) -> str | None:
    if not r["runnable"]:
        return f"cannot run ({r['reason'].split(':')[-1].strip()})"
    if r["baseline"] == "harness":
        return "beyond the paper; not the published method (this harness's optimizer)"
    if r["beyond"]:
        return "beyond the paper"
    return None


def _compare(df: pd.DataFrame, measure: str):
    return L.compare_records(aggregate(df, f"ACC_{measure}"), "paper", ("row",), _no_verdict)


@needs_results
def compare_rows(df: pd.DataFrame, measure: str = "task") -> list[dict]:
    """Rows for ``report.compare`` of the retention (``measure`` = ``task`` or ``class``), each with
    the optimizer, learning rate, batch and memory it ran with (mean and sd over the seeds made)."""
    return _compare(df, measure)[0]


@needs_results
def no_verdicts(df: pd.DataFrame, measure: str = "task") -> dict:
    """The rows of :func:`compare_rows` that get no verdict, with the reason (beyond the paper, not
    the published method, or cannot run), keyed as ``report.compare`` expects."""
    return _compare(df, measure)[1]


#: the two readings of the paper's numbers (:func:`measure_fit`): (name, which runs, accuracy column)
READINGS = (("task-aware, task-masked training", "masked", "ACC_task"),
            ("class-incremental, single-head training", "single", "ACC_class"))


def _paper_means(df: pd.DataFrame, col: str) -> pd.DataFrame:
    a = aggregate(df[df.paper.notna() & df.runnable], col)
    return a.set_index("key")


@needs_results
def measure_rows(df: pd.DataFrame, single: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows beside both accuracies of both trainings (mean over seeds): the task-masked
    runs of :func:`run_rows` (``df``) and the single-head runs of :func:`single_head_rows`
    (``single``); the paper's rows that both made."""
    m_t, m_c = _paper_means(df, "ACC_task"), _paper_means(df, "ACC_class")
    s_t, s_c = _paper_means(single, "ACC_task"), _paper_means(single, "ACC_class")
    keys = [k for k in m_t.index if k in s_t.index]
    return pd.DataFrame([{"row": m_t.loc[k, "row"], "paper": float(m_t.loc[k, "paper"]),
                          "task masks: task-aware": float(m_t.loc[k, "mean"]),
                          "task masks: class-incremental": float(m_c.loc[k, "mean"]),
                          "single head: task-aware": float(s_t.loc[k, "mean"]),
                          "single head: class-incremental": float(s_c.loc[k, "mean"])} for k in keys])


@needs_results
def measure_fit(df: pd.DataFrame, single: pd.DataFrame) -> pd.DataFrame:
    """Which reading of the paper's numbers fits ours (:data:`READINGS`): the task-aware accuracy of
    the task-masked models, or the class-incremental accuracy of models trained with a single head
    (the class-incremental accuracy of a task-masked model mixes heads that were never trained
    against each other, so it cannot stand for the second reading). Over the paper's rows that both
    made: the mean absolute difference and the rank correlation (Spearman) of our means with the
    paper's, and the runs behind them."""
    runs = {"masked": df, "single": single}
    keys = [k for k in _paper_means(df, "ACC_task").index if k in _paper_means(single, "ACC_class").index]
    out = []
    for name, which, col in READINGS:
        a = _paper_means(runs[which], col).loc[keys]
        ours, pap = a["mean"].astype(float), a["paper"].astype(float)
        rho = float(ours.rank().corr(pap.rank())) if len(a) > 1 else float("nan")
        out.append({"reading": name, "rows": len(a), "seeds": int(a["runs"].min()) if len(a) else 0,
                    "mean |ours - paper|": float((ours - pap).abs().mean()),
                    "ours: range": f"{ours.min():.2f} .. {ours.max():.2f}",
                    "paper: range": f"{pap.min():.1f} .. {pap.max():.1f}", "rank correlation": rho})
    return pd.DataFrame(out)


@needs_results
def transfer_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of ACC, BWT, FWT and LA (GEM's definitions, divided by T - 1), both measures."""
    return L.transfer_means(df, "row")


# the image budget in bits (section 3): 8 x 1 x 28 x 28
IMAGE_BITS = accounting.image_bits((1, 28, 28))
