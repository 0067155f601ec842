"""Chapter "lifelong learning on Omniglot": paper section 5.2 (its Omniglot paragraph), appendix A.4.

Fifty alphabets learned as fifty tasks, in order, one example at a time, in a single pass, by a
ResNet-18 (GEM's reduced one, one input channel, 1,623 outputs with task masks), under an
incremental storage budget of N full 28x28 examples (``recollect.train.lifelong``):

* the paper's rows (``recollect.paper.OMNIGLOT_LIFELONG``): online (no buffer); rehearsal with a
  lossless buffer of N = 10 and N = 50 images (1 and 3 gradient steps per example at 50); the
  recollection generator, a categorical autoencoder of 62 (N = 10) or 312 (N = 50) two-way
  variables whose codes fill the same bits (1 and 3 steps at 50);
* beyond the paper: GEM and iCaRL at both budgets, in the same harness (where they cannot run, the
  row says why).

Experiments (each cached by its config, resumable task by task):

* :func:`run_rows` -- one row per (method row, seed): final average accuracy ("retention") and
  backward / forward transfer, task-aware and class-incremental.
* :func:`accuracy_curves` -- the accuracy matrices as a tidy table (for the figures).
* :func:`storage_table` -- the accounting of every row (no training).

Configurations that share the network and the schedule (1-step online / rehearsal / recollection
rows; the 3-step rows) train as ONE fused model with one group per (row, seed); GEM and iCaRL run
on their own, their seeds fused.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import torch

from .. import accounting, data, paper
from ..cache import config_key
from ..utils import threads
from ..train.lifelong import LifelongConfig, LifelongResult, fuse_groups, n_train_classes, plan_storage, run_lifelong

__all__ = ["BAND", "NAME", "config", "stream", "rows", "row_configs", "storage_table", "run_results", "run_rows",
           "accuracy_curves", "chance", "compare_rows", "measure_fit", "transfer_table", "claims", "training_seconds",
           "figure_curves", "figure_matrices", "figure_final"]

NAME = "lifelong-omniglot"
#: Tolerance band of the verdicts, in accuracy points (absolute): agrees within 2, close within 4.
BAND = 2.0
PAPER_BUDGETS = (10, 50)


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def config(ctx) -> dict:
    """Every setting of the chapter, from the profile.

    ``paper``: all 50 alphabets (29,214 training, 3,246 test images), GEM's ResNet-18 (nf = 20),
    budgets of 10 and 50 full examples, autoencoders of (62, 2) and (312, 2), 10 recollections (or
    rehearsal images, or exemplars) per step, Adam at 1e-3 for the reasoning model and the
    autoencoder (appendix A.4), every seed of the context, a checkpoint after every task.
    ``smoke``: 5 alphabets, the first 12
    training examples of each, one test image per character, nf = 2, budgets 2 and 10 (like
    the paper's, the small one below the number of tasks), autoencoders (16, 2) and (32, 2), 5
    items per step, the first two seeds, one CPU thread (tiny operations on a shared 2-core
    machine run far slower on 2 threads), no checkpoints.
    """
    smoke = ctx.smoke
    if smoke:
        budgets, codes = [2, 10], {2: [16, 2], 10: [32, 2]}
    else:
        budgets = list(PAPER_BUDGETS)
        codes = {b: list(paper.OMNIGLOT_LIFELONG_GENERATORS[b]) for b in budgets}
    return dict(
        stream=dict(train_fraction=0.9, split_seed=0, tasks=5 if smoke else None,
                    train_per_task=12 if smoke else None, test_per_class=1 if smoke else None),
        seeds=[int(s) for s in (ctx.seeds[:2] if smoke else ctx.seeds)],
        model="resnet18", nf=2 if smoke else 20, replay=5 if smoke else 10,
        lr=1e-3, ae_lr=1e-3, optimizer="adam", train_mask="task", ae_replay="autoencode",
        gem_margin=0.5, icarl_reg=1.0,
        budgets=budgets, codes={str(b): c for b, c in codes.items()},
        threads=1 if smoke else None, device=ctx.device.type, checkpoint=not smoke,
    )



def stream(cfg: dict):
    """The task stream of the config: Omniglot's 50 alphabets (or the smoke subset). Built once per
    process and setting (do not modify the returned tensors)."""
    s = cfg["stream"]
    with threads(cfg.get("threads")):
        return _stream(s["train_fraction"], s["split_seed"], s["tasks"], s["train_per_task"], s["test_per_class"])


@functools.lru_cache(maxsize=2)
def _stream(train_fraction, split_seed, tasks, train_per_task, test_per_class):
    st = data.omniglot_tasks(train_fraction=train_fraction, seed=split_seed)
    if tasks is not None or train_per_task is not None or test_per_class is not None:
        st = st.subset(train_per_task=train_per_task, test_per_class=test_per_class, tasks=tasks)
    return st


def rows(cfg: dict) -> list[dict]:
    """The chapter's rows: the paper's seven, then GEM and iCaRL at both budgets (beyond the paper).

    ``paper_budget`` is the paper's budget the row stands for (the smoke profile's budgets are
    smaller); ``paper`` the paper's retention, or None."""
    small, large = cfg["budgets"]
    psmall, plarge = PAPER_BUDGETS
    out = [("online", 0, 1, psmall), ("rehearsal", small, 1, psmall), ("recollection", small, 1, psmall),
           ("rehearsal", large, 1, plarge), ("rehearsal", large, 3, plarge),
           ("recollection", large, 1, plarge), ("recollection", large, 3, plarge),
           ("gem", small, 1, psmall), ("gem", large, 1, plarge),
           ("icarl", small, 1, psmall), ("icarl", large, 1, plarge)]
    res = []
    for method, budget, steps, pb in out:
        key = (method, pb if method != "online" else PAPER_BUDGETS[0], steps)
        res.append(dict(method=method, budget=budget, steps=steps, paper_budget=0 if method == "online" else pb,
                        paper=paper.OMNIGLOT_LIFELONG.get(key), beyond=method in ("gem", "icarl"),
                        code=cfg["codes"][str(budget)] if method == "recollection" else None))
    return res


def _label(r: dict) -> str:
    if r["method"] == "online":
        return "online"
    code = f", ({r['code'][0]}, {r['code'][1]}) code" if r["code"] else ""
    return f"{r['method']}, budget {r['budget']}{code}, {r['steps']} step{'s' if r['steps'] > 1 else ''}"


def row_configs(cfg: dict) -> list[LifelongConfig]:
    """A :class:`LifelongConfig` per row."""
    out = []
    for r in rows(cfg):
        out.append(LifelongConfig(
            method=r["method"], budget=r["budget"], steps=r["steps"], replay=cfg["replay"], lr=cfg["lr"],
            optimizer=cfg["optimizer"], model=cfg["model"], model_kwargs={"nf": cfg["nf"]},
            code=tuple(r["code"]) if r["code"] else None, ae_lr=cfg["ae_lr"], ae_replay=cfg["ae_replay"],
            gem_margin=cfg["gem_margin"], icarl_reg=cfg["icarl_reg"], train_mask=cfg["train_mask"]))
    return out


# ------------------------------------------------------------------------------------------------
# accounting
# ------------------------------------------------------------------------------------------------
def storage_table(ctx) -> pd.DataFrame:
    """What every row stores within its budget (section 3.1's incremental constraint)."""
    cfg = config(ctx)
    st = stream(cfg)
    ncls = n_train_classes(st)
    out = []
    for r, c in zip(rows(cfg), row_configs(cfg)):
        if r["steps"] > 1:
            continue
        p = plan_storage(c, st.image_shape, st.n_tasks, ncls)
        out.append({"method": r["method"], "budget (full examples)": r["budget"],
                    "budget bits": p.budget_bits, "stored item": p.item, "bits per item": p.bits_per_item,
                    "items stored": p.capacity, "bits used": p.used_bits if p.runnable else np.nan,
                    "runs": "yes" if p.runnable else f"no: {p.reason}"})
    return pd.DataFrame(out)


def chance(ctx) -> dict:
    """Accuracy of a uniform guess (%): task-aware (mean over tasks of 100 / classes of the task)
    and class-incremental (100 / all classes)."""
    st = stream(config(ctx))
    per_task = [100.0 / len(c) for c in st.task_classes]
    return {"task-aware": float(np.mean(per_task)), "class-incremental": 100.0 / st.n_classes}


# ------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------
def _run_key(cfg: dict, cfgs: list[LifelongConfig]) -> dict:
    keep = {k: cfg[k] for k in ("stream", "seeds", "device")}  # checkpointing and threads change no result
    return dict(keep, configs=[c.to_dict() for c in cfgs])


def run_results(ctx, progress: bool | None = None) -> list[LifelongResult]:
    """One :class:`LifelongResult` per row (in :func:`rows` order); runs that share a network and a
    schedule are fused; each fused run is cached, and checkpointed after every task."""
    cfg = config(ctx)
    cfgs = row_configs(cfg)
    progress = (not ctx.smoke) if progress is None else progress
    out: list = [None] * len(cfgs)
    for idx in fuse_groups(cfgs):
        run = [cfgs[i] for i in idx]
        key = _run_key(cfg, run)
        ck = config_key(NAME, key)

        def fn(run=run, ck=ck):
            resume = ctx.cache.get_checkpoint(ck) if cfg["checkpoint"] else None
            save = (lambda t, h: ctx.cache.put_checkpoint(ck, h.state_dict())) if cfg["checkpoint"] else None
            with threads(cfg["threads"]):
                res = run_lifelong(stream(cfg), run, cfg["seeds"], ctx.device, resume=resume, progress=progress,
                                   on_task_end=save,
                                   desc="+".join(sorted({c.method for c in run})) + f" x{run[0].steps}")
            return [r.to_dict() for r in res]

        for i, d in zip(idx, ctx.cache.memo(NAME, key, fn)):
            out[i] = LifelongResult.from_dict(d)
    return out


def run_rows(ctx) -> pd.DataFrame:
    """One row per (method row, seed): ACC (retention), BWT, FWT, LA, task-aware (``_task``) and
    class-incremental (``_class``), with the storage, the paper's number and the run's wall time."""
    cfg = config(ctx)
    run_of = {i: k for k, idx in enumerate(fuse_groups(row_configs(cfg))) for i in idx}
    out = []
    for i, (r, res) in enumerate(zip(rows(cfg), run_results(ctx))):
        base = {"row": _label(r), "run": run_of[i], "method": r["method"], "budget": r["budget"], "steps": r["steps"],
                "paper_budget": r["paper_budget"], "paper": r["paper"], "beyond": r["beyond"],
                "items": res.storage["capacity"], "runnable": res.runnable, "reason": res.storage["reason"],
                "seconds": res.seconds, "fused_with": res.fused_with}
        summ = res.summary()
        for rec in summ.to_dict("records"):
            out.append(dict(base, **rec))
    return pd.DataFrame(out)


def accuracy_curves(ctx) -> pd.DataFrame:
    """The accuracy matrices as a tidy table: row, seed, ``after`` (tasks learned, 0 = random init),
    ``task``, ``task_aware`` and ``class_incremental`` accuracy (%)."""
    cfg = config(ctx)
    out = []
    for r, res in zip(rows(cfg), run_results(ctx)):
        if not res.runnable:
            continue
        out.append(res.curves(row=_label(r), method=r["method"], budget=r["budget"], steps=r["steps"]))
    return pd.concat(out, ignore_index=True)


def training_seconds(df: pd.DataFrame) -> float:
    """Wall time of all fused runs (each counted once)."""
    return float(df[df.runnable].drop_duplicates("run").seconds.sum())


# ------------------------------------------------------------------------------------------------
# tables and claims
# ------------------------------------------------------------------------------------------------
def _agg(df: pd.DataFrame, col: str) -> pd.DataFrame:
    g = df.groupby("row", sort=False)
    out = g.agg(method=("method", "first"), budget=("budget", "first"), steps=("steps", "first"),
                paper=("paper", "first"), beyond=("beyond", "first"), runnable=("runnable", "first"),
                reason=("reason", "first"), mean=(col, "mean"), sd=(col, "std"), runs=(col, "count"))
    out["sd"] = out["sd"].fillna(0.0)
    return out.reset_index()


def compare_rows(df: pd.DataFrame, measure: str = "task") -> tuple[list[dict], dict]:
    """Rows for ``report.compare`` of the retention (``measure`` = ``task`` or ``class``) and the
    no-verdict reasons (beyond the paper, or cannot run)."""
    a = _agg(df, f"ACC_{measure}")
    rows_, nv = [], {}
    for _, r in a.iterrows():
        runs = int(r["runs"]) if r["runnable"] else 0
        ours = float(r["mean"]) if r["runnable"] else float("nan")
        rows_.append({"row": r["row"], "paper": None if pd.isna(r["paper"]) else float(r["paper"]),
                      "ours": ours, "sd": float(r["sd"]) if r["runnable"] else float("nan"), "runs": runs})
        if not r["runnable"]:
            nv[(r["row"],)] = f"cannot run ({r['reason'].split(':')[-1].strip()})"
        elif r["beyond"]:
            nv[(r["row"],)] = "beyond the paper"
    return rows_, nv


def measure_fit(df: pd.DataFrame) -> pd.DataFrame:
    """Which of our two accuracies looks like the paper's numbers: over the paper's seven rows, the
    mean absolute difference and the rank correlation (Spearman) of our means with the paper's."""
    out = []
    for measure, name in (("task", "task-aware"), ("class", "class-incremental")):
        a = _agg(df[df.paper.notna() & df.runnable], f"ACC_{measure}")
        ours, pap = a["mean"].astype(float), a["paper"].astype(float)
        rho = float(ours.rank().corr(pap.rank())) if len(a) > 1 else float("nan")
        out.append({"measure": name, "rows": len(a), "mean |ours - paper|": float((ours - pap).abs().mean()),
                    "ours: range": f"{ours.min():.2f} .. {ours.max():.2f}",
                    "paper: range": f"{pap.min():.1f} .. {pap.max():.1f}", "rank correlation": rho})
    return pd.DataFrame(out)


def transfer_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of ACC, BWT, FWT and LA (GEM's definitions, divided by T - 1), both measures."""
    cols = [c for c in df.columns if c.split("_")[0] in ("ACC", "BWT", "FWT", "LA")]
    ok = df[df.runnable]
    out = ok.groupby("row", sort=False)[cols].mean().reset_index()
    return out


def _mean(df, row_pred, col):
    sel = df[row_pred(df) & df.runnable]
    return float(sel[col].mean()) if len(sel) else float("nan")


def claims(df: pd.DataFrame) -> list[tuple[str, bool, str]]:
    """The qualitative claims of section 5.2's Omniglot paragraph, on our numbers, for both measures."""
    small = int(df[df.method == "rehearsal"].budget.min())
    large = int(df[df.method == "rehearsal"].budget.max())

    def m(method, budget, steps, col):
        return _mean(df, lambda d: (d.method == method) & (d.budget == budget) & (d.steps == steps), col)

    out = []
    for measure, name in (("task", "task-aware"), ("class", "class-incremental")):
        col = f"ACC_{measure}"
        on = m("online", 0, 1, col)
        rs, rl, rl3 = m("rehearsal", small, 1, col), m("rehearsal", large, 1, col), m("rehearsal", large, 3, col)
        cs, cl, cl3 = m("recollection", small, 1, col), m("recollection", large, 1, col), m("recollection", large, 3, col)

        def ev(*pairs):
            return "; ".join(f"{k} {v:.2f}" for k, v in pairs)
        out += [
            (f"[{name}] Rehearsal with the small budget is within 1 point of online learning (paper 3.6 vs 3.5)",
             abs(rs - on) <= 1.0, ev(("rehearsal", rs), ("online", on))),
            (f"[{name}] Recollections beat rehearsal at the small budget (paper 5.0 vs 3.6)",
             cs > rs, ev(("recollection", cs), ("rehearsal", rs))),
            (f"[{name}] Recollections beat rehearsal at the large budget, 1 step (paper 9.3 vs 4.3)",
             cl > rl, ev(("recollection", cl), ("rehearsal", rl))),
            (f"[{name}] Recollections beat rehearsal at the large budget, 3 steps (paper 13.0 vs 4.8)",
             cl3 > rl3, ev(("recollection", cl3), ("rehearsal", rl3))),
            (f"[{name}] Three steps per example help rehearsal (paper 4.8 vs 4.3)",
             rl3 > rl, ev(("3 steps", rl3), ("1 step", rl))),
            (f"[{name}] Three steps per example help the recollection generator (paper 13.0 vs 9.3)",
             cl3 > cl, ev(("3 steps", cl3), ("1 step", cl))),
            (f"[{name}] The larger budget helps both rehearsal and recollections (paper 4.3 > 3.6, 9.3 > 5.0)",
             rl > rs and cl > cs, ev(("rehearsal", rl), ("vs", rs), ("recollection", cl), ("vs", cs))),
        ]
    return out


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
_STYLE = {"online": ("k", "-"), "rehearsal": ("tab:blue", "-"), "recollection": ("tab:red", "-"),
          "gem": ("tab:green", "--"), "icarl": ("tab:purple", "--")}


def figure_curves(curves: pd.DataFrame, df: pd.DataFrame, chance_levels: dict | None = None):
    """Average accuracy over the tasks seen so far, after each task (mean over seeds), task-aware and
    class-incremental; the paper's final retentions are drawn as hollow markers at the last task."""
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    c = curves[(curves.after >= 1) & (curves.task < curves.after)]
    for ax, col, title in ((axes[0], "task_aware", "task-aware"), (axes[1], "class_incremental", "class-incremental")):
        for row, grp in c.groupby("row", sort=False):
            method, steps = grp.method.iloc[0], grp.steps.iloc[0]
            color, ls = _STYLE[method]
            y = grp.groupby(["seed", "after"])[col].mean().groupby("after").mean()
            ax.plot(y.index, y.values, color=color, ls=":" if steps > 1 else ls, lw=1.5, label=row,
                    alpha=0.6 if grp.budget.iloc[0] == df.budget[df.method == "rehearsal"].min() else 1.0)
            p = df[df.row == row].paper.iloc[0]
            if p is not None and not pd.isna(p):
                ax.plot([y.index.max()], [p], marker="o", mfc="none", mec=color, ms=9)
        if chance_levels:
            lvl = chance_levels["task-aware" if col == "task_aware" else "class-incremental"]
            ax.axhline(lvl, color="grey", lw=0.8, ls="--", label="chance")
        ax.set_xlabel("tasks learned")
        ax.set_ylabel("mean accuracy over tasks seen (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Accuracy across the stream (hollow circles: the paper's final retention)")
    fig.tight_layout()
    return fig


def figure_matrices(curves: pd.DataFrame, col: str = "task_aware", rows_to_show: list | None = None):
    """Per-task accuracy across the stream: the accuracy matrix (after task i, on task j; mean over
    seeds) of a few rows as heat maps."""
    import matplotlib.pyplot as plt

    names = rows_to_show or list(dict.fromkeys(curves.row))[:4]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    vmax = float(curves[col].max()) if len(curves) else 1.0
    for k, (ax, name) in enumerate(zip(axes[0], names)):
        d = curves[(curves.row == name) & (curves.after >= 1)]
        mat = d.groupby(["after", "task"])[col].mean().unstack("task")
        im = ax.imshow(mat.values, vmin=0, vmax=vmax, cmap="viridis", aspect="auto", origin="upper",
                       extent=(0.5, mat.shape[1] + 0.5, mat.index.max() + 0.5, mat.index.min() - 0.5))
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("task evaluated")
        if k == 0:
            ax.set_ylabel("tasks learned")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"{col.replace('_', '-')} accuracy (%)")
    return fig


def figure_final(df: pd.DataFrame):
    """Final retention per row, mean ± sd over seeds, both measures, the paper's value beside."""
    import matplotlib.pyplot as plt

    ok = df[df.runnable]
    a_t, a_c = _agg(ok, "ACC_task"), _agg(ok, "ACC_class")
    x = np.arange(len(a_t))
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.bar(x - 0.27, a_t["mean"], 0.27, yerr=a_t["sd"], label="ours, task-aware", color="tab:blue")
    ax.bar(x, a_c["mean"], 0.27, yerr=a_c["sd"], label="ours, class-incremental", color="tab:orange")
    pap = a_t["paper"].astype(float)
    ax.bar(x + 0.27, pap.fillna(0), 0.27, label="paper", color="tab:grey")
    ax.set_xticks(x)
    ax.set_xticklabels(a_t["row"], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("retention (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# the image budget in bits (section 3): 8 x 1 x 28 x 28
IMAGE_BITS = accounting.image_bits((1, 28, 28))
