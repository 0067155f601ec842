"""recollect.figures and recollect.claims: every chapter's figure functions draw, and its claim function
evaluates, on the chapter's tables.

* ``test_figures_on_small_tables`` (always, a few seconds): hand-made tables of the shape each chapter's
  table functions return.
* ``test_figures_on_the_smoke_results`` (per chapter): the chapter's real smoke results through its
  table functions (``context("smoke")``, as the notebook calls them), then every figure and the claims.
  It runs when the smoke results are already in the working cache (``make test`` shares one cache
  between nbval's chapter runs and these tests), or when ``RECOLLECT_SLOW_TESTS=1`` (then it trains
  what is missing: a few minutes on 2 cores for all five chapters); otherwise it is skipped.
"""
import inspect
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from recollect import claims as C  # noqa: E402
from recollect import figures as F  # noqa: E402
from recollect import paper  # noqa: E402
from recollect.data import DataError  # noqa: E402
from recollect.experiments import context  # noqa: E402
from recollect.experiments import distill_mnist as DM  # noqa: E402
from recollect.experiments import distill_omniglot as DO  # noqa: E402
from recollect.experiments import distortion as D  # noqa: E402
from recollect.experiments import items as I  # noqa: E402
from recollect.experiments import lifelong_cifar as LC  # noqa: E402
from recollect.experiments import lifelong_omniglot as LO  # noqa: E402

CHAPTERS = tuple(F.BY_CHAPTER)


def _draw(chapter: str, args: dict, claims) -> None:
    """Call every figure function of ``chapter`` on its arguments in ``args`` ({name: tuple}); each must
    return a matplotlib figure. ``claims``: the chapter's claim list, checked for its form."""
    assert set(args) == set(F.BY_CHAPTER[chapter]), "every figure of the chapter is drawn"
    for name in F.BY_CHAPTER[chapter]:
        fig = getattr(F, name)(*args[name])
        assert isinstance(fig, matplotlib.figure.Figure), name
        plt.close(fig)
    assert claims and all(isinstance(c, str) and isinstance(h, (bool, np.bool_)) and isinstance(e, str)
                          for c, h, e in claims)


def test_every_figure_function_is_listed_once_and_passes_missing_results_through():
    listed = [n for names in F.BY_CHAPTER.values() for n in names]
    assert sorted(listed) == sorted(n for n in F.__all__ if n != "BY_CHAPTER") and len(set(listed)) == len(listed)
    m = I.Missing(["x/y"])
    for name in listed:
        fn = getattr(F, name)
        need = [p for p in inspect.signature(fn).parameters.values() if p.default is p.empty]
        if name != "distortion_budget":  # eqs 3-4 only: no results
            assert fn(*[m] * len(need)) is m, name
    for name in C.__all__:
        fn = getattr(C, name)
        need = [p for p in inspect.signature(fn).parameters.values() if p.default is p.empty]
        assert fn(*[m] * len(need)) is m, name


def test_figure2_draws_the_parts_that_are_made_and_shows_the_rest(capsys):
    """At the paper profile a chapter is partly made for a long time: Figure 2 and its companions draw
    what is there, and say (displayed, since figure cells end in ';') what is not."""
    (args, _) = _small_distortion()
    t5, t6, jpeg = args["distortion_figure2"]
    m5 = I.Missing(["distortion/ae-categorical-6-2"])
    fig = F.distortion_figure2(m5, t6, jpeg)
    assert isinstance(fig, matplotlib.figure.Figure)
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "continuous (ours)" in labels and "JPEG (ours)" in labels and "categorical (ours)" not in labels
    assert "categorical 0 of 27, continuous 2 of 6" in ax.get_title()
    plt.close(fig)
    assert "ae-categorical-6-2 is not yet made" in capsys.readouterr().out
    fig = F.distortion_curves(m5, t6)
    assert isinstance(fig, matplotlib.figure.Figure) and "not made yet" in [t.get_text() for t in fig.axes[0].texts]
    plt.close(fig)
    m = I.Missing(["distortion/baselines"])
    assert F.distortion_baselines(t5, jpeg, m) is m
    assert F.distortion_figure2(m5, m5, m5) is m5
    assert "distortion/baselines is not yet made" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ small tables
def _ae(labels, lrs=(1e-2, 1e-3), epochs=3):
    res = [dict(lrs=list(lrs), distortion=[0.02 * (i + 1) + 0.01 * g for g in range(len(lrs))],
                loss=[[0.5 - 0.1 * e] * len(lrs) for e in range(epochs)],
                curve=[[0.2 - 0.05 * e + 0.01 * g for g in range(len(lrs))] for e in range(epochs)], params=1)
           for i, _ in enumerate(labels)]
    return D._results_frame(res, labels)


def _small_distortion():
    from recollect import accounting

    def cat(c, l):
        bits = accounting.sbe_bits(c, l)
        return dict(c=c, l=l, bits=bits, capacity=accounting.capacity_bits(c, l),
                    compression=accounting.compression_ratio(D.IMAGE_BITS, bits))

    t5 = _ae([cat(6, 2), cat(38, 2), cat(168, 2)])
    t6 = _ae([dict(h=h, floats=4 * h, bits=128 * h, compression=D.IMAGE_BITS / (128 * h)) for h in (1, 2)])
    lc = _ae([dict(c=6, l=2, loss=loss) for loss in ("BCE", "BCE + 1 KL")])
    jpeg = pd.DataFrame(dict(quality=[1, 50], compression=[20.0, 5.0], distortion=[0.1, 0.03]))
    base = pd.DataFrame(dict(method=["PCA, 8-bit coefficients"] * 2 + ["k-means codebook"] * 2,
                             compression=[784.0, 392.0, 6272.0, 3136.0], distortion=[0.2, 0.15, 0.18, 0.17],
                             bits=[8, 16, 1, 2]))
    by_rho = D.budget_search(fractions=(0.02,), rhos=(1.0, 0.5), n_examples=50_000)
    by_n = D.budget_search(fractions=0.1, rhos=0.1, n_examples=[1_000, 100_000])
    args = {"distortion_figure2": (t5, t6, jpeg), "distortion_loss_choice": (lc,), "distortion_curves": (t5, t6),
            "distortion_baselines": (t5, jpeg, base), "distortion_budget": (by_rho,)}
    return args, C.distortion(t5, t6, by_rho, by_n)


def _generators(names_cl):
    return pd.DataFrame([dict(generator=g, c=c, l=l, epoch=e, train_loss=0.3 - 0.01 * e, distortion=0.1 - 0.01 * e)
                         for g, (c, l) in names_cl.items() for e in (1, 2)])


def _images(labels, n=4):
    g = torch.Generator().manual_seed(0)
    return [(lab, torch.rand(n, 1, 28, 28, generator=g)) for lab in labels]


def _small_distill_mnist():
    teacher = pd.DataFrame(dict(epoch=[1, 2], val_acc=[95.0, 97.0], test_acc=[94.0, 96.5], chosen=[False, True]))
    gens = _generators({"10x": (168, 2), "100x": (38, 2)})
    sources = ["Real Data", "1% Sample", "Real x / Teacher y", "10x Compress", "100x Compress",
               "Code sampling 10x", "Code sampling 100x"]
    summary = pd.DataFrame([dict(arch=a, source=s, sampling=sp, episodes=ep, lr=1e-3, val_mean=np.nan,
                                 mean=10.0 + i + ep / 10, sd=1.0, runs=2)
                            for a in ("lenet", "mlp") for sp in ("random", "active")
                            for i, s in enumerate(sources) for ep in (10, 100)])
    args = {"distill_mnist_curves": (teacher, gens),
            "distill_mnist_recollections": (_images(["real", "10x buffer (168, 2)", "10x random code"]),),
            "distill_mnist_tables": (summary,), "distill_mnist_figure4": (summary,)}
    return args, C.distill_mnist(summary, DM.storage_accounting(1000))


def _small_distill_omniglot():
    teacher = pd.DataFrame(dict(epoch=[1, 2], train_loss=[1.0, 0.5], test_acc=[40.0, 60.0]))
    gens = _generators({"10x": (134, 2), "100x": (32, 2)})
    summary = pd.DataFrame([dict(column=c, episodes=ep, mean=10.0 + 5 * i + ep / 20, sd=1.0, runs=2)
                            for i, c in enumerate(DO.COLUMNS) for ep in (20, 100)])
    long = pd.DataFrame([dict(column=c, seed=0, episodes=ep, accuracy=10.0 + ep / 20)
                         for c in DO.COLUMNS for ep in (20, 100, 200)])
    acct = DO.storage_accounting(paper.OMNIGLOT_GENERATORS, 1000)
    args = {"distill_omniglot_curves": (teacher, gens),
            "distill_omniglot_recollections": (_images(["real", "10x (134, 2)"]),),
            "distill_omniglot_episodes": (summary, teacher, long),
            "distill_omniglot_storage": (summary, acct, teacher, 5.0)}
    return args, C.distill_omniglot(summary, teacher, None, long)


def _curves(keys: dict, tasks=3, **extra):
    g = torch.Generator().manual_seed(1)
    rows = []
    for key, info in keys.items():
        for seed in (0, 1):
            for after in range(tasks + 1):
                for task in range(tasks):
                    acc = torch.rand(2, generator=g).mul(100).tolist()
                    rows.append(dict(extra, key=key, row=key, seed=seed, after=after, task=task, task_aware=acc[0],
                                     class_incremental=acc[1], **info))
    return pd.DataFrame(rows)


def _small_lifelong_omniglot():
    keys = {"online": dict(method="online", budget=0, steps=1),
            "rehearsal-10": dict(method="rehearsal", budget=10, steps=1),
            "recollection-50-x3": dict(method="recollection", budget=50, steps=3),
            "gem-50": dict(method="gem", budget=50, steps=1), "gem-50-adam": dict(method="gem", budget=50, steps=1)}
    baseline = {"gem-50": "published", "gem-50-adam": "harness"}
    curves = _curves(keys)
    df = pd.DataFrame([dict(row=k, key=k, paper=[3.5, 3.6, None, None, None][i], beyond=k.startswith("gem"),
                            baseline=baseline.get(k), runnable=True, reason="", optimizer="Adam, lr 1e-3", memory="-",
                            seed=s, ACC_task=10.0 + i + s, ACC_class=1.0 + i, **info)
                       for i, (k, info) in enumerate(keys.items()) for s in (0, 1)])
    chance = {"task-aware": 5.0, "class-incremental": 0.1, "tasks": 3}
    args = {"lifelong_omniglot_curves": (curves, df, chance), "lifelong_omniglot_matrices": (curves, "task_aware"),
            "lifelong_omniglot_final": (df,)}
    return args, C.lifelong_omniglot(df)


def _small_lifelong_cifar():
    keys = {"online": dict(method="online", budget=0), "rehearsal-200": dict(method="rehearsal", budget=200),
            "recollection-200": dict(method="recollection", budget=200), "gem-200": dict(method="gem", budget=200),
            "gem-200-adam": dict(method="gem", budget=200)}
    curves = _curves(keys, split="coarse")
    df = pd.DataFrame([dict(split="coarse", key=k, row=k, paper_budget=info["budget"],
                            paper3=[33.3, 43.0, 51.6, None, None][i], paper4=[None, 43.0, None, 48.7, None][i],
                            baseline=LC.BASELINE_ROWS.get(k), runnable=True, classes=100, seed=s,
                            ACC_task=30.0 + 5 * i + s, **info)
                       for i, (k, info) in enumerate(keys.items()) for s in (0, 1)])
    args = {"lifelong_cifar_task_curves": (curves,), "lifelong_cifar_final_per_task": (curves, df),
            "lifelong_cifar_average": (curves, df)}
    return args, C.lifelong_cifar(df)


SMALL = {D.CHAPTER: _small_distortion, DM.CHAPTER: _small_distill_mnist, DO.CHAPTER: _small_distill_omniglot,
         LO.CHAPTER: _small_lifelong_omniglot, LC.CHAPTER: _small_lifelong_cifar}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_figures_on_small_tables(chapter):
    _draw(chapter, *SMALL[chapter]())


# ------------------------------------------------------------------------------------------------ smoke results
def _smoke_distortion(ctx):
    t5, t6, jpeg, lc, base = D.table5(ctx), D.table6(ctx), D.jpeg(ctx), D.loss_choice(ctx), D.baselines(ctx)
    by_rho = D.budget_search(fractions=(0.10, 0.02, 0.01), rhos=(1.0, 0.5, 0.2, 0.1), n_examples=50_000)
    by_n = D.budget_search(fractions=0.10, rhos=0.1, n_examples=[1_000, 10_000, 100_000, 1_000_000, 10_000_000])
    args = {"distortion_figure2": (t5, t6, jpeg), "distortion_loss_choice": (lc,), "distortion_curves": (t5, t6),
            "distortion_baselines": (t5, jpeg, base), "distortion_budget": (by_rho,)}
    return args, C.distortion(t5, t6, by_rho, by_n)


def _smoke_distill_mnist(ctx):
    teacher, gens = DM.teacher(ctx), DM.generators(ctx)
    summary = DM.summarize(DM.students(ctx))
    args = {"distill_mnist_curves": (teacher, gens), "distill_mnist_recollections": (DM.recollections(ctx),),
            "distill_mnist_tables": (summary,), "distill_mnist_figure4": (summary,)}
    return args, C.distill_mnist(summary, DM.storage_accounting(50_000))


def _smoke_distill_omniglot(ctx):
    teacher, gens = DO.teacher(ctx), DO.generators(ctx)
    summary = DO.summarize(DO.students(ctx))
    long = DO.long_run(ctx)
    args = {"distill_omniglot_curves": (teacher, gens), "distill_omniglot_recollections": (DO.recollections(ctx),),
            "distill_omniglot_episodes": (summary, teacher, long),
            "distill_omniglot_storage": (summary, DO.profile_storage(ctx), teacher, DO.chance(ctx))}
    return args, C.distill_omniglot(summary, teacher, DO.eq4_table(), long)


def _smoke_lifelong_omniglot(ctx):
    df, curves = LO.run_rows(ctx), LO.accuracy_curves(ctx)
    args = {"lifelong_omniglot_curves": (curves, df, LO.chance(ctx)),
            "lifelong_omniglot_matrices": (curves, "task_aware"), "lifelong_omniglot_final": (df,)}
    return args, C.lifelong_omniglot(df)


def _smoke_lifelong_cifar(ctx):
    df, curves = LC.run_rows(ctx), LC.accuracy_curves(ctx)
    args = {"lifelong_cifar_task_curves": (curves,), "lifelong_cifar_final_per_task": (curves, df),
            "lifelong_cifar_average": (curves, df)}
    return args, C.lifelong_cifar(df)


SMOKE = {D.CHAPTER: _smoke_distortion, DM.CHAPTER: _smoke_distill_mnist, DO.CHAPTER: _smoke_distill_omniglot,
         LO.CHAPTER: _smoke_lifelong_omniglot, LC.CHAPTER: _smoke_lifelong_cifar}


class _NotCached(Exception):
    pass


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_figures_on_the_smoke_results(chapter, monkeypatch):
    slow = bool(os.environ.get("RECOLLECT_SLOW_TESTS"))
    if not slow:
        def not_cached(item, *a, **k):
            raise _NotCached(item.key)
        monkeypatch.setattr(I, "run_item", not_cached)  # a cache miss would train: skip instead
    try:
        args, claims = SMOKE[chapter](context("smoke"))
    except _NotCached as e:
        pytest.skip(f"smoke result {e} not in the working cache (run the chapter first, or set "
                    "RECOLLECT_SLOW_TESTS=1 to train it here)")
    except DataError as e:  # the dataset is not there
        pytest.skip(f"dataset not available: {e}")
    _draw(chapter, args, claims)
