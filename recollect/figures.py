"""Every chapter's figures, in one place (issue 12: figures live apart from the run code).

The figures only draw: each takes the tables (or, for the recollections, the decoded images) that the
chapter module ``recollect.experiments.<chapter>`` makes from the items' payloads, and returns the
matplotlib figure. A function that takes results passes a
:class:`~recollect.experiments.items.Missing` through and displays it (a figure cell ends in ``;``, so
its value is not shown), so a chapter rendered at the paper profile says what is not made yet instead
of failing or showing nothing; Figure 2 and its companions draw the parts that are made. Names: ``<chapter module>_<what>``;
:data:`BY_CHAPTER` lists them per chapter. The docstrings say which figure of the paper each one
redraws ("no figure of the paper": a figure the chapter adds as evidence).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from . import paper
from .experiments import distill_mnist as DM
from .experiments import distill_omniglot as DO
from .experiments import distortion as D
from .experiments import lifelong_cifar as LC
from .experiments import lifelong_omniglot as LO
from .experiments.items import Missing, is_missing

__all__ = [
    "BY_CHAPTER",
    "distortion_figure2", "distortion_loss_choice", "distortion_curves", "distortion_baselines", "distortion_budget",
    "distill_mnist_curves", "distill_mnist_recollections", "distill_mnist_tables", "distill_mnist_figure4",
    "distill_omniglot_curves", "distill_omniglot_recollections", "distill_omniglot_episodes",
    "distill_omniglot_storage",
    "lifelong_omniglot_curves", "lifelong_omniglot_matrices", "lifelong_omniglot_final",
    "lifelong_cifar_task_curves", "lifelong_cifar_final_per_task", "lifelong_cifar_average",
]

#: chapter -> the names of its figure functions, in the order the chapter shows them
BY_CHAPTER = {
    D.CHAPTER: ("distortion_figure2", "distortion_loss_choice", "distortion_curves", "distortion_baselines",
                "distortion_budget"),
    DM.CHAPTER: ("distill_mnist_curves", "distill_mnist_recollections", "distill_mnist_tables",
                 "distill_mnist_figure4"),
    DO.CHAPTER: ("distill_omniglot_curves", "distill_omniglot_recollections", "distill_omniglot_episodes",
                 "distill_omniglot_storage"),
    LO.CHAPTER: ("lifelong_omniglot_curves", "lifelong_omniglot_matrices", "lifelong_omniglot_final"),
    LC.CHAPTER: ("lifelong_cifar_task_curves", "lifelong_cifar_final_per_task", "lifelong_cifar_average"),
}


def _show(m: Missing) -> Missing:
    """Display ``m`` (a figure cell ends in ``;``: its value is not shown) and return it."""
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython comes with the notebook stack
        print(m.message())
    else:
        display(m)
    return m


def needs_results(fn):
    """A figure's :func:`~recollect.experiments.items.needs_results`: given a :class:`Missing`, it
    displays it and returns it instead of drawing."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        m = is_missing(*args, *kwargs.values())
        if m is not None:
            return _show(m)
        return fn(*args, **kwargs)
    return wrapper


def _made(*parts):
    """Display each :class:`Missing` among ``parts`` (a figure drawing the rest); True if any part is made."""
    for p in parts:
        if isinstance(p, Missing):
            _show(p)
    return any(not isinstance(p, Missing) for p in parts)


# ------------------------------------------------------------------------------------------------
# distortion against compression (section 3, Figure 2, Tables 5 and 6, eqs 3-4)
# ------------------------------------------------------------------------------------------------
def _rows_made(df, kind: str, total: int) -> str:
    n = 0 if isinstance(df, Missing) else len(D.best_rows(df))
    return f"{kind} {n} of {total}"


def _axes(ax=None, figsize=(7, 4.5)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def distortion_figure2(t5, t6, jpeg, ax=None):
    """Figure 2 of the paper (section 3) redrawn: distortion (mean L1, pixels / 255) against compression (log
    scale); ours filled, the paper's Tables 5 and 6 hollow. Draws the parts that are made (the title
    counts the rows of each kind) and displays what is not; a :class:`Missing` when nothing is."""
    if not _made(t5, t6, jpeg):
        return t5
    fig, ax = _axes(ax)
    p5 = np.array([v for v in paper.TABLE5.values()])
    p6 = np.array([v for v in paper.TABLE6.values()])
    ax.scatter(p5[:, 0], p5[:, 1], facecolors="none", edgecolors="C0", marker="o", label="categorical (paper)")
    ax.scatter(p6[:, 0], p6[:, 1], facecolors="none", edgecolors="C1", marker="s", label="continuous (paper)")
    if not isinstance(t5, Missing):
        b5 = D.best_rows(t5)
        ax.scatter(b5["compression"], b5["distortion"], color="C0", marker="o", label="categorical (ours)")
    if not isinstance(t6, Missing):
        b6 = D.best_rows(t6).sort_values("compression")
        ax.plot(b6["compression"], b6["distortion"], color="C1", marker="s", label="continuous (ours)")
    if not isinstance(jpeg, Missing):
        j = jpeg.sort_values("compression")
        ax.plot(j["compression"], j["distortion"], color="C2", marker="^", label="JPEG (ours)")
        for r in j.itertuples():
            ax.annotate(f"q{r.quality}", (r.compression, r.distortion), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color="C2")
    ax.set_xscale("log")
    ax.set_xlabel("compression (raw 6,272 bits / stored bits)")
    ax.set_ylabel("distortion (mean |x - x_hat|, pixels / 255)")
    title = "Figure 2: distortion against compression on MNIST (training set)"
    done = (_rows_made(t5, "categorical", len(paper.TABLE5)), _rows_made(t6, "continuous", len(paper.TABLE6)))
    if isinstance(t5, Missing) or isinstance(t6, Missing) or t5.attrs.get("missing") or t6.attrs.get("missing"):
        title += f"\nours so far: {done[0]}, {done[1]} rows"
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def distortion_baselines(t5, jpeg, base, ax=None):
    """Beyond the paper (no figure of it; Figure 2's axes): the categorical VAE among PCA, k-means and
    downsampling (:func:`recollect.experiments.distortion.baselines`). Needs the baselines; draws the
    autoencoders and JPEG where they are made."""
    if isinstance(base, Missing):
        return _show(base)
    _made(t5, jpeg)
    fig, ax = _axes(ax, figsize=(8, 5))
    if not isinstance(t5, Missing):
        b5 = D.best_rows(t5)
        ax.scatter(b5["compression"], b5["distortion"], color="C0", marker="o", zorder=5,
                   label="categorical VAE (ours)")
    if not isinstance(jpeg, Missing):
        j = jpeg.sort_values("compression")
        ax.plot(j["compression"], j["distortion"], color="C2", marker="^", label="JPEG")
    styles = {"PCA, 8-bit coefficients": ("C3", "-"), "PCA, 32-bit coefficients": ("C3", ":"),
              "k-means codebook": ("C4", "-"), "downsample, 8-bit pixels": ("C5", "-"),
              "downsample, 1-bit pixels": ("C5", ":")}
    for method, grp in base.groupby("method", sort=False):
        g = grp.sort_values("compression")
        color, ls = styles.get(method, ("k", "-"))
        ax.plot(g["compression"], g["distortion"], color=color, ls=ls, marker=".", ms=4, label=method)
    km = base[base["method"].str.startswith("k-means")]
    if len(km):
        edge = km["compression"].min()
        ax.axvline(edge, color="C4", lw=0.8, ls="--")
        ax.annotate("k-means stops here\n(K must stay below N)", (edge, ax.get_ylim()[0]), fontsize=7, color="C4",
                    ha="left", va="bottom", xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("compression (raw 6,272 bits / stored bits)")
    ax.set_ylabel("distortion (mean |x - x_hat|, pixels / 255)")
    ax.set_title("Where the discrete VAE stands among classical codecs (bits per image)")
    # below the axes: inside, it would cover the low-compression ends of the curves
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    ax.grid(alpha=0.3, which="both")
    return fig


def distortion_curves(t5, t6):
    """No figure of the paper (it names no number of epochs): per-epoch training loss and distortion (first
    ``curve_images`` images) at each architecture's best learning rate (Tables 5 and 6): the evidence for the
    number of epochs. Draws the kinds that are made and displays what is not."""
    import matplotlib.pyplot as plt

    if not _made(t5, t6):
        return t5
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for df, kind, cmap in ((t5, "categorical", "viridis"), (t6, "continuous", "autumn")):
        if isinstance(df, Missing):
            ax = axes[0] if kind == "categorical" else axes[1]
            ax.text(0.5, 0.5, "not made yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
            continue
        cur = D.training_curves(df)
        best = D.best_rows(df)
        keys = ["c", "l"] if kind == "categorical" else ["h"]
        bits = best["bits"].astype(float)
        lo, hi = math.log(bits.min()), math.log(bits.max()) + 1e-9
        for r in best.itertuples():
            sel = np.logical_and.reduce([cur[k] == getattr(r, k) for k in keys] + [cur["lr"] == r.lr])
            cc = cur[sel]
            col = plt.get_cmap(cmap)((math.log(r.bits) - lo) / (hi - lo) * 0.85)
            ax = axes[0] if kind == "categorical" else axes[1]
            ax.plot(cc["epoch"], cc["train_loss"], color=col, lw=1)
            axes[2].plot(cc["epoch"], cc["curve_distortion"], color=col, lw=1, ls="-" if kind == "categorical" else "--")
    axes[0].set_title("categorical: training loss (BCE), best lr")
    axes[1].set_title("continuous: training loss (BCE), best lr")
    axes[2].set_title("distortion after each epoch\n(solid categorical, dashed continuous)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean BCE per pixel")
    axes[2].set_ylabel("distortion")
    axes[2].set_yscale("log")
    fig.text(0.5, -0.02, "colour: bits per code (dark = few, light = many)", ha="center", fontsize=8)
    fig.tight_layout()
    return fig


@needs_results
def distortion_loss_choice(lc):
    """No figure of the paper (it names no loss): distortion after each epoch, BCE alone against BCE + KL, at
    each loss's best learning rate, with the other learning rates faint."""
    import matplotlib.pyplot as plt

    cur = D.training_curves(lc)
    archs = lc[["c", "l"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.6), squeeze=False)
    best = D.best_rows(lc)
    for ax, (c, l) in zip(axes[0], archs):
        for i, loss in enumerate(lc["loss"].unique()):
            sel = cur[(cur["c"] == c) & (cur["l"] == l) & (cur["loss"] == loss)]
            blr = best[(best["c"] == c) & (best["l"] == l) & (best["loss"] == loss)]["lr"].iloc[0]
            for lr, g in sel.groupby("lr"):
                strong = lr == blr
                ax.plot(g["epoch"], g["curve_distortion"], color=f"C{i}", alpha=1.0 if strong else 0.25,
                        lw=1.6 if strong else 0.8, label=f"{loss} (lr {lr:.0e})" if strong else None)
        ax.set_title(f"(c, l) = ({c}, {l})")
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("distortion")
    fig.tight_layout()
    return fig


def distortion_budget(by_rho):
    """No figure of the paper; eqs 3 and 4 (sections 3.1 and 3.2) drawn: the best capacity C_ve against rho,
    without and with the model's parameters."""
    fig, ax = _axes(figsize=(6.5, 4))
    for i, (frac, g) in enumerate(by_rho.groupby("budget (x image)", sort=False)):
        g = g.sort_values("rho")
        ax.plot(g["rho"], g["eq 3 C_ve"], color=f"C{i}", marker="o", label=f"eq 3, gamma/N = {frac:g} image")
        ax.plot(g["rho"], g["eq 4 C_ve"], color=f"C{i}", marker="x", ls="--", label=f"eq 4 (with |theta|), {frac:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rho (probability that an incoming example is stored)")
    ax.set_ylabel("best capacity C_ve (bits)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return fig


# ------------------------------------------------------------------------------------------------
# generative distillation on MNIST (section 5.1, Figure 4, Tables 1 and 2)
# ------------------------------------------------------------------------------------------------
@needs_results
def distill_mnist_curves(teacher_df: pd.DataFrame, gen_df: pd.DataFrame):
    """No figure of the paper; section 5.1's 500 epochs checked. Training curves: the teacher's validation and
    test accuracy per epoch (the kept epoch starred), the generators' training loss and distortion per epoch
    (dotted: Table 5's distortion of the same (c, l)): the evidence that 500 epochs have converged."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    ax[0].plot(teacher_df.epoch, teacher_df.val_acc, "-", lw=1, label="validation")
    ax[0].plot(teacher_df.epoch, teacher_df.test_acc, "-", lw=1, label="test")
    ch = teacher_df[teacher_df.chosen]
    ax[0].plot(ch.epoch, ch.val_acc, "k*", ms=10, label="kept (best validation)")
    ax[0].axhline(paper.MNIST_TEACHER_ACC, color="k", ls="--", lw=1, label=f"paper {paper.MNIST_TEACHER_ACC}")
    ax[0].set(xlabel="epoch", ylabel="accuracy (%)", title="LeNet teacher")
    lo = min(teacher_df.val_acc.min(), teacher_df.test_acc.min())
    ax[0].set_ylim(max(lo - 0.5, 0), 100)
    ax[0].legend(fontsize=8)
    for g, sub in gen_df.groupby("generator", sort=False):
        c, l = int(sub.c.iloc[0]), int(sub.l.iloc[0])
        ax[1].plot(sub.epoch, sub.train_loss, label=f"({c}, {l})")
        ax[2].plot(sub.epoch, sub.distortion, label=f"({c}, {l})")
        if (c, l) in paper.TABLE5:
            ax[2].axhline(paper.TABLE5[(c, l)][1], ls=":", lw=1, color=ax[2].lines[-1].get_color())
    from matplotlib.ticker import MaxNLocator

    for a in ax:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax[1].set(xlabel="epoch", ylabel="BCE per pixel", title="generators: training loss")
    ax[2].set_yscale("log")
    ax[2].set(xlabel="epoch", ylabel="mean |x - x'| (pixels / 255)",
              title="generators: distortion (dotted: Table 5)")
    ax[1].legend(fontsize=8)
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _image_rows(rows: list):
    """One row of images per ``(label, images)`` of ``rows`` (images float in [0, 1], ``(n, 1, H, W)``)."""
    import matplotlib.pyplot as plt

    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0), squeeze=False)
    for i, (lab, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(np.asarray(imgs[j, 0].detach().cpu() if hasattr(imgs, "detach") else imgs[j, 0]),
                      cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(lab, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return fig


@needs_results
def distill_mnist_recollections(rows: list):
    """No figure of the paper (section 5.1's recollections shown): real training images, their
    recollections from each buffer (the codes stored for exactly these images), and decoded uniformly
    random codes (what code sampling trains on); ``rows`` from
    :func:`recollect.experiments.distill_mnist.recollections`."""
    return _image_rows(rows)


@needs_results
def distill_mnist_tables(summary: pd.DataFrame):
    """No figure of the paper: its Tables 1 and 2 (section 5.1) as curves: test accuracy against episodes per
    column (lines: ours, mean and sd band; hollow markers: the paper)."""
    import matplotlib.pyplot as plt

    archs = [a for a in ("lenet", "mlp") if (summary.arch == a).any()]
    fig, axes = plt.subplots(len(archs), 2, figsize=(13, 4.2 * len(archs)), squeeze=False)
    colors = dict(zip(paper.TABLE_COLUMNS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for i, a in enumerate(archs):
        name, tab = DM.TABLES[a]
        for j, sampling in enumerate(("random", "active")):
            ax = axes[i, j]
            for col in paper.TABLE_COLUMNS:
                s = summary[(summary.arch == a) & (summary.sampling == sampling) & (summary.source == col)]
                col_c = colors[col]
                if len(s):
                    s = s.sort_values("episodes")
                    ax.plot(s.episodes, s["mean"], "-o", ms=3, color=col_c, label=col)
                    ax.fill_between(s.episodes, s["mean"] - s.sd, s["mean"] + s.sd, color=col_c, alpha=0.15)
                ax.plot(paper.EPISODES, [tab[sampling][(e, col)] for e in paper.EPISODES], "o", mfc="none",
                        color=col_c, ms=6)
            ax.set(xscale="log", xlabel="episodes", ylabel="test accuracy (%)",
                   title=f"{name} ({'LeNet' if a == 'lenet' else 'MLP'} student), {sampling} sampling")
            ax.set_ylim(0, 100)
            if i == 0 and j == 0:
                ax.plot([], [], "o", mfc="none", color="gray", label="hollow: paper")
                ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


@needs_results
def distill_mnist_figure4(summary: pd.DataFrame):
    """Figure 4 of the paper (section 5.1) redrawn: buffer against code sampling, LeNet students, accuracy
    against episodes. The paper's figure survives only as its caption, so there are no paper points to
    overlay."""
    import matplotlib.pyplot as plt

    f4 = DM.figure4_table(summary)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"buffer": "-", "code": "--"}
    for (m, how), s in f4.groupby(["model", "sampling"], sort=False):
        s = s.sort_values("episodes")
        line, = ax.plot(s.episodes, s.accuracy, styles[how], marker="o", ms=3, label=f"{m} {how} sampling")
        ax.fill_between(s.episodes, s.accuracy - s.sd, s.accuracy + s.sd, alpha=0.15, color=line.get_color())
    ax.set(xscale="log", xlabel="episodes", ylabel="test accuracy (%)", ylim=(0, 100),
           title="Figure 4: recollection buffer vs code sampling (LeNet)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# generative distillation on Omniglot (section 5.1, appendix A.3)
# ------------------------------------------------------------------------------------------------
@needs_results
def distill_omniglot_curves(teacher_df: pd.DataFrame, gen_df: pd.DataFrame):
    """No figure of the paper (appendix A.3's models). Training curves: the teacher's test accuracy per epoch,
    and the generators' loss and distortion per epoch (the evidence for the numbers of epochs)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    ax[0].plot(teacher_df.epoch, teacher_df.test_acc, "-", lw=1, label="ours (test)")
    ax[0].axhline(paper.OMNIGLOT_TEACHER_ACC, color="k", ls="--", lw=1, label=f"paper {paper.OMNIGLOT_TEACHER_ACC}")
    ax[0].set(xlabel="epoch", ylabel="task-aware accuracy (%)", title="ResNet-18 teacher", ylim=(0, 100))
    ax[0].legend(fontsize=8)
    for g, sub in gen_df.groupby("generator", sort=False):
        c, l = int(sub.c.iloc[0]), int(sub.l.iloc[0])
        ax[1].plot(sub.epoch, sub.train_loss, label=f"{g}: ({c}, {l})")
        ax[2].plot(sub.epoch, sub.distortion, label=f"{g}: ({c}, {l})")
    ax[1].set(xlabel="epoch", ylabel="BCE per pixel", title="generators: training loss")
    ax[2].set(xlabel="epoch", ylabel="mean |x - x'| (pixels / 255)", title="generators: distortion", yscale="log")
    ax[1].legend(fontsize=8)
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


@needs_results
def distill_omniglot_recollections(rows: list):
    """No figure of the paper (section 5.1's Omniglot recollections shown): real training images (one
    character from each of several alphabets) and their recollections, the codes stored for exactly
    these images decoded by each generator; ``rows`` from
    :func:`recollect.experiments.distill_omniglot.recollections`."""
    return _image_rows(rows)


@needs_results
def distill_omniglot_storage(summary: pd.DataFrame, acct: pd.DataFrame, teacher_df: pd.DataFrame, chance_level=None):
    """No figure of the paper: section 5.1's Omniglot numbers drawn. Accuracy after the table's last episode
    against total storage (a fraction of the lossless training set, log scale): lossless samples and
    recollections, ours filled (mean ± sd), the paper (at one million episodes) hollow."""
    import matplotlib.pyplot as plt

    top = int(summary.episodes.max())
    s = summary[summary.episodes == top].set_index("column")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ours_c = {f"{r.generator} Compress": 1 / r.total_ratio for r in acct.itertuples()}
    paper_c = {c: 1 / DO.NOMINAL_RATIO[g] for c, g in DO.GEN_OF.items()}
    for label, fr, pfr, color, marker in (("lossless samples", DO.SAMPLE_FRACTION, DO.SAMPLE_FRACTION, "C0", "s"),
                                          ("recollections", ours_c, paper_c, "C3", "o")):
        cols = [c for c in fr if c in s.index]
        ax.errorbar([fr[c] for c in cols], [s.loc[c, "mean"] for c in cols], yerr=[s.loc[c, "sd"] for c in cols],
                    color=color, marker=marker, capsize=3, label=f"{label} (ours, {top:,} episodes)")
        ax.plot(list(pfr.values()), [paper.OMNIGLOT_DISTILL[c] for c in pfr], ls=":", marker=marker, mfc="none",
                color=color, label=f"{label} (paper, 1M episodes)")
    if "Real Data" in s.index:
        ax.errorbar([1.0], [s.loc["Real Data", "mean"]], yerr=[s.loc["Real Data", "sd"]], color="k", marker="D",
                    capsize=3, label="all real examples (ours)")
    ax.axhline(float(teacher_df.test_acc.iloc[-1]), color="k", lw=0.8, ls="--", label="teacher (ours)")
    ax.axhline(paper.OMNIGLOT_TEACHER_ACC, color="grey", lw=0.8, ls=":", label="teacher (paper)")
    if chance_level is not None:
        ax.axhline(chance_level, color="grey", lw=0.8, ls="-.", label="chance (task-aware)")
    ax.set(xscale="log", xlabel="total storage / lossless training set", ylabel="task-aware test accuracy (%)",
           ylim=(0, 100), title=f"Omniglot distillation after {top:,} episodes")
    ax.legend(fontsize=7, loc="center right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


@needs_results
def distill_omniglot_episodes(summary: pd.DataFrame, teacher_df: pd.DataFrame, long=None):
    """No figure of the paper: section 5.1's Omniglot students over episodes. Test accuracy against episodes
    per column: the five-run table (mean and sd band, solid), the one-run long run (dashed) and the paper's
    one-million-episode numbers (hollow markers)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colors = dict(zip(DO.COLUMNS, ["k", "C0", "C9", "C2", "C3", "C1", "C4"]))
    have_long = long is not None and not isinstance(long, Missing) and len(long)
    for col in DO.COLUMNS:
        sub = summary[summary.column == col].sort_values("episodes")
        if len(sub):
            ax.plot(sub.episodes, sub["mean"], "-o", ms=3, color=colors[col], label=col)
            ax.fill_between(sub.episodes, sub["mean"] - sub.sd, sub["mean"] + sub.sd, color=colors[col], alpha=0.15)
        if have_long:
            lg = long[long.column == col].groupby("episodes")["accuracy"].mean()
            ax.plot(lg.index, lg.values, "--", lw=1, color=colors[col])
        if col in paper.OMNIGLOT_DISTILL:
            ax.plot([DO.PAPER_EPISODES], [paper.OMNIGLOT_DISTILL[col]], "o", mfc="none", ms=8, color=colors[col])
    ax.axhline(float(teacher_df.test_acc.iloc[-1]), color="k", lw=0.8, ls="--", label="teacher (ours)")
    ax.set(xscale="log", xlabel="episodes (one example, one update)", ylabel="task-aware test accuracy (%)",
           ylim=(0, 100), title="Students per column (solid: 5 runs; dashed: the one-run long run;\n"
                                "hollow: the paper at one million episodes)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# lifelong learning on Omniglot (section 5.2, appendix A.4)
# ------------------------------------------------------------------------------------------------
_LO_STYLE = {"online": ("k", "-"), "rehearsal": ("tab:blue", "-"), "recollection": ("tab:red", "-"),
             "gem": ("tab:green", "--"), "icarl": ("tab:purple", "--")}


@needs_results
def lifelong_omniglot_curves(curves: pd.DataFrame, df: pd.DataFrame, chance_levels: dict | None = None):
    """No figure of the paper: section 5.2's Omniglot rows across the stream. Average accuracy over the
    tasks seen so far, after each task (mean over seeds), task-aware and class-incremental; the paper's
    final retentions are drawn as hollow markers at the last task."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    c = curves[(curves.after >= 1) & (curves.task < curves.after)]
    small = df.budget[df.method == "rehearsal"].min() if (df.method == "rehearsal").any() else None
    for ax, col, title in ((axes[0], "task_aware", "task-aware"), (axes[1], "class_incremental", "class-incremental")):
        for row, grp in c.groupby("row", sort=False):
            method, steps = grp.method.iloc[0], grp.steps.iloc[0]
            color, ls = _LO_STYLE[method]
            if str(grp.key.iloc[0]).endswith("-adam"):  # GEM with this harness's optimizer
                ls = "-."
            y = grp.groupby(["seed", "after"])[col].mean().groupby("after").mean()
            ax.plot(y.index, y.values, color=color, ls=":" if steps > 1 else ls, lw=1.5, label=row,
                    alpha=0.6 if grp.budget.iloc[0] == small else 1.0)
            p = df[df.row == row].paper.iloc[0]
            if p is not None and not pd.isna(p):
                ax.plot([y.index.max()], [p], marker="o", mfc="none", mec=color, ms=9)
        if isinstance(chance_levels, dict):
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


@needs_results
def lifelong_omniglot_matrices(curves: pd.DataFrame, col: str = "task_aware",
                               keys=("online", "rehearsal-50", "recollection-50", "recollection-50-x3")):
    """No figure of the paper (section 5.2, Omniglot). Per-task accuracy across the stream: the accuracy
    matrix (after task i, on task j; mean over seeds) of a few rows (``keys``, those made) as heat maps."""
    import matplotlib.pyplot as plt

    shown = [k for k in keys if k in set(curves.key)] or list(dict.fromkeys(curves.key))[:4]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.4), squeeze=False)
    vmax = float(curves[col].max()) if len(curves) else 1.0
    im = None
    for k, (ax, key) in enumerate(zip(axes[0], shown)):
        d = curves[(curves.key == key) & (curves.after >= 1)]
        mat = d.groupby(["after", "task"])[col].mean().unstack("task")
        im = ax.imshow(mat.values, vmin=0, vmax=vmax, cmap="viridis", aspect="auto", origin="upper",
                       extent=(0.5, mat.shape[1] + 0.5, mat.index.max() + 0.5, mat.index.min() - 0.5))
        ax.set_title(d.row.iloc[0], fontsize=8)
        ax.set_xlabel("task evaluated")
        if k == 0:
            ax.set_ylabel("tasks learned")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"{col.replace('_', '-')} accuracy (%)")
    return fig


@needs_results
def lifelong_omniglot_final(df: pd.DataFrame):
    """No figure of the paper: its Omniglot numbers of section 5.2 as bars. Final retention per row, mean ± sd
    over seeds, both measures, the paper's value beside."""
    import matplotlib.pyplot as plt

    ok = df[df.runnable]
    a_t, a_c = LO.aggregate(ok, "ACC_task"), LO.aggregate(ok, "ACC_class")
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


# ------------------------------------------------------------------------------------------------
# lifelong learning on incremental CIFAR-100 (section 5.2, Tables 3 and 4)
# ------------------------------------------------------------------------------------------------
_LC_COLOR = {"online": "k", "rehearsal": "tab:blue", "recollection": "tab:red", "gem": "tab:green",
             "icarl": "tab:purple", "total-scratch": "tab:orange", "total-transfer": "tab:brown"}
_LC_DASH = {10: ":", 50: "--", 200: "-", 0: "-"}


def _lc_style(key: str, method: str, paper_budget: int):
    color = _LC_COLOR.get(key, _LC_COLOR[method])
    if key.endswith("-adam"):  # GEM and iCaRL with this harness's optimizer (not the published methods)
        return color, "-."
    return color, _LC_DASH.get(paper_budget, "-")


def _lc_finish(fig, axes):
    """Integer ticks on the task axes; one legend (of the panel with the most rows) right of the last."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    best = max(axes, key=lambda a: len(a.get_legend_handles_labels()[0]))
    h, lab = best.get_legend_handles_labels()
    axes[-1].legend(h, lab, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()


_LC_SHOW = ("online", "rehearsal-200", "recollection-200", "total-transfer", "gem-200", "icarl-200")


@needs_results
def lifelong_cifar_task_curves(curves: pd.DataFrame, keys=_LC_SHOW, col: str = "task_aware"):
    """No figure of the paper (section 5.2, Tables 3 and 4's rows). Accuracy of each task across the stream:
    one panel per (split, row), one line per task (colour: task index), from the moment the task is learned
    (mean over seeds)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    splits = list(dict.fromkeys(curves.split))
    shown = [k for k in keys if k in set(curves.key)]
    fig, axes = plt.subplots(len(splits), len(shown), figsize=(2.9 * len(shown), 2.6 * len(splits)),
                             squeeze=False, sharey=True)
    T = int(curves.task.max()) + 1
    cmap = plt.get_cmap("viridis")
    for a, split in enumerate(splits):
        for b, key in enumerate(shown):
            ax = axes[a][b]
            d = curves[(curves.split == split) & (curves.key == key) & (curves.after >= 1)]
            if not len(d):
                ax.set_axis_off()
                continue
            mat = d.groupby(["after", "task"])[col].mean().unstack("task")
            for j in range(T):
                y = mat[j][mat.index >= j + 1]
                ax.plot(y.index, y.values, color=cmap(j / max(T - 1, 1)), lw=1, marker=".", ms=3)
            ax.set_title(f"{split}: {d.row.iloc[0]}", fontsize=7)
            ax.set_xlabel("tasks learned", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if b == 0:
                ax.set_ylabel(f"{col.replace('_', '-')} accuracy (%)", fontsize=8)
    fig.suptitle("Accuracy of every task across the stream (colour: task, dark = first)", fontsize=9)
    fig.tight_layout()
    return fig


@needs_results
def lifelong_cifar_final_per_task(curves: pd.DataFrame, df: pd.DataFrame, col: str = "task_aware"):
    """No figure of the paper (section 5.2, Tables 3 and 4's rows). Final accuracy on every task (after the
    whole stream; mean over seeds), one line per row, one panel per split."""
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(curves.split))
    fig, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 3.8), squeeze=False, sharey=True)
    last = int(curves.after.max())
    pb = df.drop_duplicates("key").set_index("key").paper_budget
    for ax, split in zip(axes[0], splits):
        d = curves[(curves.split == split) & (curves.after == last)]
        for key, g in d.groupby("key", sort=False):
            y = g.groupby("task")[col].mean()
            color, ls = _lc_style(key, g.method.iloc[0], int(pb[key]))
            ax.plot(y.index + 1, y.values, color=color, ls=ls, marker="o", ms=3, lw=1.2, label=g.row.iloc[0])
        ax.set_title(split, fontsize=9)
        ax.set_xlabel("task")
        ax.set_ylabel(f"final {col.replace('_', '-')} accuracy (%)")
    _lc_finish(fig, list(axes[0]))
    return fig


@needs_results
def lifelong_cifar_average(curves: pd.DataFrame, df: pd.DataFrame, col: str = "task_aware"):
    """No figure of the paper: Tables 3 and 4 (section 5.2) across the stream. Mean accuracy over the tasks
    learned so far, after each task (mean over seeds), one panel per split; hollow circles: the paper's
    final retention (Table 3, else Table 4) at the last task."""
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(curves.split))
    fig, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 3.8), squeeze=False, sharey=True)
    info = df.drop_duplicates("key").set_index("key")
    for ax, split in zip(axes[0], splits):
        c = curves[(curves.split == split) & (curves.after >= 1) & (curves.task < curves.after)]
        for key, g in c.groupby("key", sort=False):
            y = g.groupby(["seed", "after"])[col].mean().groupby("after").mean()
            color, ls = _lc_style(key, g.method.iloc[0], int(info.paper_budget[key]))
            ax.plot(y.index, y.values, color=color, ls=ls, lw=1.3, label=g.row.iloc[0])
            p = info.paper3[key] if info.paper3[key] is not None and not pd.isna(info.paper3[key]) else info.paper4[key]
            if p is not None and not pd.isna(p) and col == "task_aware":
                ax.plot([y.index.max()], [p], marker="o", mfc="none", mec=color, ms=8)
        ax.set_title(split, fontsize=9)
        ax.set_xlabel("tasks learned")
        ax.set_ylabel(f"mean {col.replace('_', '-')} accuracy over tasks seen (%)")
    fig.suptitle("Accuracy across the stream (hollow circles: the paper's final retention)", fontsize=9)
    _lc_finish(fig, list(axes[0]))
    return fig
