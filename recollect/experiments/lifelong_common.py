"""What the two lifelong chapters (section 5.2: incremental Omniglot and CIFAR-100) share: one item
is one *fused run* of the lifelong harness (``recollect.train.lifelong``), and its payload is data.

* :func:`run_fused` runs the configs of one item (configs that share the network and the schedule
  train as one fused model, ``fuse_groups``; GEM and iCaRL alone) at the item's seeds, resumable: a
  :class:`~recollect.train.checkpoint.Checkpointer` in the job's machine-local directory saves the
  harness about every 90 s at the end of a task (``on_task_end``) and ``resume`` continues from it.
* Its payload (:func:`payload_of`): the stream's facts, the seeds, and per config its storage plan
  and its accuracy matrices, task-aware and class-incremental, ``(S, T + 1, T)`` float32 arrays (row
  0 before the first task). No timings: the result's provenance holds them. The matrices are arrays
  (npz), not JSON numbers: the smoke record keeps the JSON part, which the GPU preflight compares
  with a numeric tolerance, and a single flipped prediction of a smoke-sized test set moves an
  accuracy by whole points.
* :func:`results_of` turns a payload back into :class:`~recollect.train.lifelong.LifelongResult` s
  (their ``summary`` and ``curves`` make the chapters' tables and figures).
* :func:`lifelong_loops` names the loops an item runs, with their step counts, for the plan's
  estimates: ``lifelong``, ``lifelong-2nd`` and ``lifelong-later`` (one step per incoming batch of
  the first task, the second, the others: all its gradient steps and the store; one example per
  batch in the paper's protocol, 10 in GEM's, so ``n_updates(task sizes, batch)`` steps together;
  a GEM or iCaRL step grows with the earlier tasks, which ``lifelong-later`` extrapolates from a
  probe of three tasks), ``eval`` (one step per test batch of an evaluation, before the first task and after each),
  ``herding`` (iCaRL: one per task end) and ``epochs`` (the CIFAR-10 autoencoder: one per
  minibatch). The harness ticks the same names (``recollect.train.probe.tick``).
* :func:`optimizer_text` and :func:`memory_text` say in words what a row ran with and what it
  stores (issue 15: every baseline row states its optimizer, learning rate, batch and memory in the
  table itself); :func:`storage_row` is a row of a chapter's storage table, with what a method holds
  beyond its budget while a task runs (iCaRL: the whole current task).
* The tables of both chapters are built alike from the payloads (:func:`payloads`): one record per
  (run, row, seed) (:func:`run_records`), the mean, sd and count over seeds per row
  (:func:`aggregate`), the rows for ``report.compare`` with those that get no verdict
  (:func:`compare_records`), and the mean of the transfer metrics (:func:`transfer_means`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd

from ..train.checkpoint import Checkpointer
from ..train.lifelong import (AS_PUBLISHED, LOOPS, LifelongConfig, LifelongResult, n_train_classes, run_lifelong,
                              updates_per_task)
from ..utils import threads
from .items import Loop, collect, get_item

__all__ = ["HarnessRun", "CAPTURED", "PROBE_EXAMPLES", "PROBE_BATCHED_EXAMPLES", "LOOP_NAMES", "seed_tag", "stream_facts", "run_fused", "payload_of", "results_of",
           "lifelong_loops", "lr_text", "optimizer_text", "memory_text", "storage_row", "select_items", "items_table",
           "PUBLISHED_NOTE", "HARNESS_NOTE", "RUN_WITH", "payloads", "run_records", "aggregate", "compare_records",
           "transfer_means"]

#: whether the harness replays each incoming batch's step from a CUDA graph on a GPU (the plan's
#: estimate differs: host-bound launches against captured kernels). It does
#: (``recollect.train.capture.CapturedStep``; a new graph per task for GEM and iCaRL).
CAPTURED = True
#: the probe (dry run, GPU preflight): the first tasks (two; three for GEM and iCaRL, whose steps grow
#: with the earlier tasks: :func:`probe_tasks`), a few incoming examples of each: 3 steps, so a
#: probe's captured step (one warm-up call, the capture, ``recollect.train.probe.PROBE_WARMUP``)
#: replays at least once in each task
PROBE_EXAMPLES = 3
#: incoming examples per task in the probe of a run on batches of 10 (GEM's protocol): 5 batches, 3
#: of them replays of the captured step
PROBE_BATCHED_EXAMPLES = 50
#: what the tables add to a baseline row run as its authors ran it, and to one run with this
#: harness's optimizer instead (issue 15)
PUBLISHED_NOTE = "as published"
HARNESS_NOTE = "this harness's optimizer (not the published method)"
#: the column of the tables that says what a row ran with (issue 15)
RUN_WITH = "optimizer, lr, batch"
#: the loop names of the lifelong items (module docstring)
LOOP_NAMES = ("lifelong", "eval", "herding", "epochs")


@dataclass(frozen=True)
class HarnessRun:
    """The settings both lifelong chapters' runs share (each chapter's run adds its data, budgets and
    codes): the stream's subset (``None``: all of it), the reasoning model, the replay per step, the
    optimizer of the online, rehearsal and recollection rows, the loss mask, what the autoencoder
    replays, and GEM and iCaRL as their authors ran them (``gem_*``, ``icarl_*``: ``AS_PUBLISHED``)."""
    tasks: int | None = None
    train_per_task: int | None = None
    test_per_class: int | None = None
    model: str = "resnet18"
    nf: int = 20
    replay: int = 10
    optimizer: str = "adam"
    lr: float = 1e-3
    train_mask: str = "task"
    ae_replay: str = "autoencode"
    gem_margin: float = AS_PUBLISHED["gem"]["gem_margin"]
    icarl_reg: float = AS_PUBLISHED["icarl"]["icarl_reg"]
    gem_optimizer: str = AS_PUBLISHED["gem"]["optimizer"]
    gem_lr: float = AS_PUBLISHED["gem"]["lr"]
    gem_batch: int = AS_PUBLISHED["gem"]["batch"]
    icarl_optimizer: str = AS_PUBLISHED["icarl"]["optimizer"]
    icarl_lr: float = AS_PUBLISHED["icarl"]["lr"]
    icarl_batch: int = AS_PUBLISHED["icarl"]["batch"]
    icarl_distill: str = AS_PUBLISHED["icarl"]["icarl_distill"]
    icarl_features: str = AS_PUBLISHED["icarl"]["icarl_features"]
    eval_batch: int = 1000
    threads: int | None = None

    @property
    def full(self) -> bool:
        """Whether the run sees the whole stream (the paper profile's data)."""
        return self.tasks is None and self.train_per_task is None and self.test_per_class is None

    # -- what a chapter's run tells the probe and the dry config (hooks; a chapter's run also has the
    # field ``rows``, the keys of its rows, which :meth:`probe` and :meth:`dry` read) --------------
    def row_configs(self) -> list:
        """(A chapter's run defines it.) A :class:`LifelongConfig` per row of the run."""
        raise NotImplementedError

    def gem_memories(self) -> tuple:
        """(A chapter's run defines it.) GEM's memories per task for each of the run's GEM budgets
        on the stream it runs (the paper's number of tasks where it runs them all)."""
        raise NotImplementedError

    def with_gem_memories(self, per: tuple, tasks: int):
        """(A chapter's run defines it.) The run whose GEM budgets hold ``per`` memories (one per
        budget, :meth:`gem_memories`) for each of ``tasks`` tasks."""
        raise NotImplementedError

    # -- the probe and the dry config of both chapters ---------------------------------------------
    def _batch(self) -> int:
        """The largest incoming batch of the run's rows (1: the paper's protocol; 10: GEM's)."""
        return max((c.batch for c in self.row_configs()), default=1) if self.rows else 1

    def _gem_only(self) -> bool:
        return bool(self.rows) and all(c.method == "gem" for c in self.row_configs())

    def probe(self):
        """The paper's shapes (model, fused groups, buffers, eval batch) for the first 2 tasks (3 for
        GEM and iCaRL, :func:`probe_tasks`) and :data:`PROBE_EXAMPLES` incoming examples of each;
        :data:`PROBE_BATCHED_EXAMPLES` for a run on batches of 10 (5 batches: the preflight captures
        its step). GEM keeps the paper's memories per task: its budgets scale to the probe's tasks,
        and it sees at least its memories of each task."""
        tasks = probe_tasks(self.row_configs()) if self.rows else 2
        n = PROBE_BATCHED_EXAMPLES if self._batch() > 1 else PROBE_EXAMPLES
        out = replace(self, tasks=tasks, train_per_task=n)
        if self._gem_only():
            per = tuple(max(1, m) for m in self.gem_memories())
            out = replace(out.with_gem_memories(per, tasks), train_per_task=max(n, *per))
        return out

    def dry(self):
        """(Of a probe config.) The dry run's: the probe's stream with one test image per class (the
        evaluation's shapes are the eval batch's, not the test set's), and a run on batches of 10 sees
        one batch of each task (its probe streams five, for the preflight's capture; GEM still sees at
        least its memories per task). A probe that is the paper config itself (a run that only counts
        storage) stays as it is."""
        if self.full:
            return self
        out = replace(self, test_per_class=1)
        batch = self._batch()
        if batch == 1:
            return out
        need = [batch, *self.gem_memories()] if self._gem_only() else [batch]
        return replace(out, train_per_task=max(need))


def seed_tag(seeds) -> str:
    """``(0,)`` -> ``s0``; ``(1, 2, 3, 4)`` -> ``s1-4``; other sets joined with ``+``."""
    s = [int(v) for v in seeds]
    if len(s) > 1 and s == list(range(s[0], s[-1] + 1)):
        return f"s{s[0]}-{s[-1]}"
    return "s" + "+".join(map(str, s))


def stream_facts(st) -> dict:
    """What the chapters show of a stream (kept in every payload, so a paper-profile rendering needs
    no dataset): tasks, classes seen in training, model outputs, images, classes per task and the
    classes of the first two tasks."""
    seen = sorted({int(c) for s in st.train for c in s.y.unique().tolist()})
    return {"name": st.name, "tasks": st.n_tasks, "classes": len(seen), "outputs": int(st.n_classes),
            "train_images": sum(len(s) for s in st.train), "test_images": sum(len(s) for s in st.test),
            "max_train_per_task": max(len(s) for s in st.train),
            "classes_per_task": [int(len(c)) for c in st.task_classes],
            "task_classes": [[int(v) for v in c.tolist()] for c in st.task_classes[:2]]}


def run_facts(cfg: HarnessRun, paper_facts: dict, stream) -> dict:
    """Tasks, classes and images of ``cfg``'s stream: ``paper_facts`` (the chapter's constants of the
    paper's stream: no dataset needed) for a run on the whole stream, else counted on ``stream(cfg)``."""
    if cfg.full:
        return dict(paper_facts)
    st = stream(cfg)
    return {"tasks": st.n_tasks, "classes": n_train_classes(st), "train_images": sum(len(s) for s in st.train),
            "test_images": sum(len(s) for s in st.test), "max_train_per_task": max(len(s) for s in st.train),
            "train_sizes": tuple(len(s) for s in st.train)}


def payload_of(st, cfgs, seeds, res: list) -> dict:
    """The payload of one fused run (module docstring); ``res`` is ``run_lifelong``'s list."""
    rows = []
    for c, r in zip(cfgs, res):
        rows.append({"config": c.to_dict(), "storage": dict(r.storage), "runnable": bool(r.runnable),
                     "complete": bool(r.complete),
                     "acc": None if r.acc is None else r.acc.float().contiguous(),
                     "acc_ci": None if r.acc_ci is None else r.acc_ci.float().contiguous()})
    steps = max((r.steps for r in res), default=0)
    return {"stream": stream_facts(st), "seeds": [int(s) for s in seeds], "steps": int(steps),
            "fused_configs": int(max((r.fused_with for r in res), default=1)), "rows": rows}


def results_of(payload: dict) -> list[LifelongResult]:
    """One :class:`LifelongResult` per config of a payload (no timings)."""
    return [LifelongResult(config=r["config"], seeds=list(payload["seeds"]), storage=r["storage"], acc=r["acc"],
                           acc_ci=r["acc_ci"], seconds=0.0, steps=payload["steps"], complete=r["complete"],
                           fused_with=payload["fused_configs"]) for r in payload["rows"]]


def run_fused(job, st, cfgs, seeds, *, ae_init=None, desc: str | None = None, n_threads: int | None = None) -> dict:
    """Run the fusable configs ``cfgs`` on stream ``st`` at ``seeds`` as one fused model and return the
    payload. Checkpointed by time (about every 90 s, at the end of a task) in the job's
    machine-local directory, resumed from there, the checkpoint deleted at the end; at a task's end
    where the next task might not finish before the job's deadline it saves and stops
    (``Job.boundary``: the item is resumable)."""
    ck = Checkpointer(job.checkpoint_dir)
    saved = ck.load()

    def on_task_end(t, harness):
        job.boundary(ck, harness.state_dict, last=t + 1 >= harness.T, what=desc or job.item.key)

    with threads(n_threads):
        res = run_lifelong(st, cfgs, list(seeds), job.device, ae_init=ae_init, resume=saved,
                           on_task_end=on_task_end if ck.enabled else None, progress=job.progress, desc=desc)
    ck.done()
    return payload_of(st, cfgs, seeds, res)


def grows_with_tasks(cfgs) -> bool:
    """Whether a step of these configs does work for every earlier task: GEM (a memory gradient per
    earlier task) and iCaRL distilling one exemplar per old class (GEM's protocol)."""
    return any(c.method == "gem" or (c.method == "icarl" and c.icarl_distill == "per_class") for c in cfgs)


def probe_tasks(cfgs) -> int:
    """Tasks of a lifelong probe: three when the step grows with the earlier tasks (the second and
    third tasks give its growth, :func:`lifelong_loops`), else two."""
    return 3 if grows_with_tasks(cfgs) else 2


def lifelong_loops(methods, runnable: bool, train_sizes, test_images: int, tasks: int, eval_batch: int,
                   batch: int = 1, grows: bool = False) -> list:
    """The loops of one fused run (module docstring); none when nothing in it can run. ``train_sizes``:
    the training examples of every task; one step per incoming batch, batches never crossing a task
    (``n_updates(train_sizes, batch)`` together), ticked as ``lifelong`` in the first task,
    ``lifelong-2nd`` in the second and ``lifelong-later`` in the others. ``grows``
    (:func:`grows_with_tasks`): a step of task t >= 1 costs ``a + b t``, and the probe runs three
    tasks (:func:`probe_tasks`): ``lifelong-later`` grows from ``lifelong-2nd`` by its mean t - 2;
    otherwise the probe runs two and the later tasks cost what the second did (``like``)."""
    if not runnable:
        return []
    first, second, later = LOOPS
    per = updates_per_task(list(train_sizes), int(batch))
    out = [Loop(first, per[0], captured=CAPTURED)]
    if len(per) > 1:
        out.append(Loop(second, per[1], captured=CAPTURED))
    n_later = sum(per[2:])
    if n_later:
        if grows:
            mean_t = sum(t * n for t, n in enumerate(per) if t >= 2) / n_later
            out.append(Loop(later, n_later, captured=CAPTURED, grows_from=second, growth=mean_t - 2))
        else:
            out.append(Loop(later, n_later, captured=CAPTURED, like=second))
    out.append(Loop("eval", (tasks + 1) * math.ceil(test_images / eval_batch)))
    if "icarl" in methods:
        out.append(Loop("herding", tasks))
    return out


def lr_text(v) -> str:
    """A learning rate as the papers write it: ``1e-3``, ``3e-4``; ``0.1``, ``1`` from 0.01 up."""
    v = float(v)
    if v >= 0.01:
        return f"{v:g}"
    return f"{v:.0e}".replace("e-0", "e-")


def _steps_text(c) -> str:
    steps = f"{c.steps} steps" if c.steps > 1 else "1 step"
    if c.batch == 1:
        return f"{steps} per example"
    return f"batches of {c.batch} examples, {steps} each"


def optimizer_text(c) -> str:
    """The optimizer, learning rates and batch of a row, as the tables show them (issue 15: every row
    says what it ran with): ``Adam, lr 1e-3; 1 step per example`` (+ the autoencoder's rate; GEM's
    margin; iCaRL's distillation and features), ``SGD, lr 0.1; QP margin 0.5; batches of 10
    examples, 1 step each``."""
    name = {"adam": "Adam", "sgd": "SGD"}[c.optimizer]
    out = f"{name}, lr {lr_text(c.lr)}"
    if c.method == "recollection":
        out += f"; autoencoder {name}, lr {lr_text(c.ae_lr)}"
    if c.method == "gem":
        out += f"; QP margin {c.gem_margin:g}"
    if c.method == "icarl":
        what = "one exemplar per old class" if c.icarl_distill == "per_class" else f"{c.replay} exemplars"
        feats = "logits" if c.icarl_features == "logits" else "penultimate features"
        out += f"; distillation weight {c.icarl_reg:g} on {what} per step; class means of the {feats}"
    if c.train_mask == "none":
        out += "; single head (no task masks)"
    return out + f"; {_steps_text(c)}"


def memory_text(c, plan: dict, tasks: int, task_images: int) -> str:
    """What a row keeps (its storage plan), in words: ``200 images``, ``5,120 codes of 48 bits``,
    ``10 images per task (200) + 9 of the incoming batch``, ``200 exemplars (+ the current task's
    2,500 images until it ends)``; a row that cannot run says so."""
    if not plan["runnable"]:
        return "cannot run"
    m = c.method
    if m == "online":
        return "none"
    if m == "rehearsal":
        return f"{plan['capacity']:,} images"
    if m == "recollection":
        extra = f" + autoencoder ({plan['fixed_bits']:,} bits)" if plan["fixed_bits"] else ""
        return f"{plan['capacity']:,} codes of {plan['bits_per_item']:,} bits{extra}"
    if m == "gem":
        extra = f" + {plan.get('transient_items', 0):,} of the incoming batch" if plan.get("transient_items") else ""
        per = plan["capacity"] // tasks
        return f"{per:,} image{'s' if per != 1 else ''} per task ({plan['capacity']:,}){extra}"
    held = plan.get("transient_items") or task_images
    return f"{plan['capacity']:,} exemplars (+ the current task's {held:,} images until it ends)"


def storage_row(label: str, budget_col: str, budget: int, plan, memory: str) -> dict:
    """One row of a chapter's storage table: a row's storage plan (``recollect.train.methods.StoragePlan``,
    made with ``task_images=``), what stays stored between tasks (``bits used``) and what a method
    holds beyond that while a task runs (iCaRL: every example of the current task, until its herding
    at the task's end; a method updating on batches of b examples: the other b - 1), with the peak."""
    ok = plan.runnable
    return {"row": label, budget_col: budget, "budget bits": plan.budget_bits, "stored item": plan.item,
            "bits per item": plan.bits_per_item, "items stored": plan.capacity, "autoencoder bits": plan.fixed_bits,
            "bits used": plan.used_bits if ok else pd.NA,
            "held while a task runs": plan.transient_items if ok else pd.NA,
            "peak bits": plan.peak_bits if ok else pd.NA,
            "peak / budget": round(plan.peak_bits / plan.budget_bits, 2) if ok and plan.budget_bits else pd.NA,
            "memory": memory if ok else f"cannot run: {plan.reason}"}


def select_items(ctx, items: list) -> list:
    """The items a rendering uses: at the smoke profile those the smoke profile runs (no
    ``versioned_by``); at the paper profile all of them, or, when the notebook gave ``seeds``, those
    whose seeds meet them (``seeds=[0]``: the first pass)."""
    if ctx.smoke:
        return [it for it in items if it.versioned_by is None]
    if ctx.seeds_given:
        want = set(ctx.seeds_given)
        return [it for it in items if want & set(it.cfg("paper").run_seeds)]
    return list(items)


def items_table(keys, seeds_of) -> pd.DataFrame:
    """The chapter's items (``python -m recollect plan`` lists them with estimates): name, stage,
    seeds, what it depends on and what it reduces from the paper's settings."""
    out = []
    for k in keys:
        it = get_item(k)
        out.append({"item": it.name, "stage": it.stage, "priority": it.priority, "GPU": it.gpu,
                    "seeds": ", ".join(map(str, seeds_of(it.cfg("paper")))),
                    "depends": ", ".join(it.depends) or "-",
                    "smoke": "runs" if it.versioned_by is None else f"as {it.versioned_by}",
                    "reduction": it.reduction or "-"})
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------------
# tables from the payloads (both chapters)
# ------------------------------------------------------------------------------------------------
def payloads(ctx, items: list) -> tuple[list, list]:
    """``([(item, cfg, payload)], missing)`` of ``items`` at ``ctx``'s profile (those made, and the
    keys of those not made yet)."""
    got, missing = collect(ctx, [it.key for it in items])
    return [(it, it.cfg(ctx.profile), got[it.key]) for it in items if it.key in got], missing


def run_records(runs: list, rows_of, fields) -> list[dict]:
    """One record per (run, method row, seed) of :func:`payloads`' ``runs``: ``fields(item, cfg, row)``
    (the chapter's own columns, first), then the storage (``items``), ``runnable`` and why not, the
    optimizer and memory in words, then the row's summary (ACC, BWT, FWT, LA, both measures).
    ``rows_of(cfg)`` lists the chapter's method rows of a config, in the payload's order."""
    out = []
    for it, cfg, pl in runs:
        f = pl["stream"]
        for r, res in zip(rows_of(cfg), results_of(pl)):
            lc = LifelongConfig(**res.config)
            base = {**fields(it, cfg, r), "items": res.storage["capacity"], "runnable": res.runnable,
                    "reason": res.storage["reason"], "optimizer": optimizer_text(lc),
                    "memory": memory_text(lc, res.storage, f["tasks"], f["max_train_per_task"])}
            for rec in res.summary().to_dict("records"):
                out.append(dict(base, **rec))
    return out


def aggregate(df: pd.DataFrame, by, col: str, first) -> pd.DataFrame:
    """Mean, sd (ddof=1; 0 for one run) and number of runs of column ``col`` per ``by`` (in the rows'
    order), with the columns ``first`` (what the row is) taken from its first record."""
    g = df.groupby(by, sort=False)
    out = g.agg(**{c: (c, "first") for c in first}, mean=(col, "mean"), sd=(col, "std"), runs=(col, "count"))
    out["sd"] = out["sd"].fillna(0.0)
    return out.reset_index()


def compare_records(agg: pd.DataFrame, paper_col: str, key_cols, no_verdict) -> tuple[list, dict]:
    """Rows for ``report.compare`` from an :func:`aggregate` table: ``key_cols``, what the row ran
    with (:data:`RUN_WITH`), its memory, the paper's number (``paper_col``) and ours (mean, sd and
    runs; NaN for a row that cannot run); and ``{key: reason}`` of the rows that get no verdict,
    ``no_verdict(row)`` giving the reason or None."""
    out, nv = [], {}
    for _, r in agg.iterrows():
        ok = bool(r["runnable"])
        p = r[paper_col]
        rec = {**{c: r[c] for c in key_cols}, RUN_WITH: r["optimizer"], "memory": r["memory"],
               "paper": None if p is None or pd.isna(p) else float(p),
               "ours": float(r["mean"]) if ok else float("nan"), "sd": float(r["sd"]) if ok else float("nan"),
               "runs": int(r["runs"]) if ok else 0}
        out.append(rec)
        why = no_verdict(r)
        if why:
            nv[(*(rec[c] for c in key_cols), rec[RUN_WITH], rec["memory"])] = why
    return out, nv


def transfer_means(df: pd.DataFrame, by) -> pd.DataFrame:
    """Mean over seeds of ACC, BWT, FWT and LA (GEM's definitions, divided by T - 1), both measures,
    per ``by``, of the runnable rows."""
    cols = [c for c in df.columns if c.split("_")[0] in ("ACC", "BWT", "FWT", "LA")]
    ok = df[df.runnable]
    return ok.groupby(by, sort=False)[cols].mean().reset_index()
