"""Chapter "generative knowledge distillation on MNIST": section 5.1, Figure 4, Tables 1 and 2,
appendix A.2.

Items (``recollect.experiments.items``; at the paper profile each a result in
``results/distill-mnist/``), all made by the code shared with the Omniglot chapter
(``recollect.experiments.distill_common``):

* ``teacher`` -- the LeNet teacher on the 50,000 training images, 500 epochs (section 5.1), the epoch
  with the best validation accuracy kept; per-epoch curve; its weights.
* ``generator-10x``, ``generator-50x``, ``generator-100x`` -- the categorical VAEs of 168, 62 and 38
  two-way variables (appendix A.2), 500 epochs each, then one stochastic encoding pass of the training
  images into a recollection buffer of 50,000 codes; per-epoch curves; weights and the filled buffer.
* ``students-lenet`` -- Table 1: every LeNet student (8 columns x {random, active} x learning rates
  1e-3 and 1e-4 x 5 runs) as the groups of ONE fused model, evaluated after 10 ... 100,000 episodes.
* ``students-mlp`` -- Table 2: the same with the MLP student.
* ``code-sampling`` -- Figure 4: LeNet students on uniformly random codes of the larger and the
  smaller generator (the buffer half of the figure is Table 1's 10x and 100x Compress columns).

The tables are functions of these payloads (:func:`summarize`, :func:`compare_table`,
:func:`table_view`, :func:`figure4_table`, :func:`recollections`); eq 4 (:func:`storage_accounting`) is
arithmetic only. The figures are in ``recollect.figures`` (``distill_mnist_*``), the claims in
``recollect.claims.distill_mnist``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from .. import accounting, paper, report
from ..buffers import RecollectionBuffer
from ..models import CategoricalVAE
from ..utils import generator
from .distill_common import (ACTIVE_K, EQUAL_STORAGE, IMAGE_BITS, IMAGE_SHAPE, SAMPLE_FRACTION, GeneratorConfig,
                             MnistData, StudentConfig, TeacherConfig, config_row, eq4_sizes, generator_frame,
                             generators_row, item_config, load_generator, pool_frame, register_generator, register_students,
                             register_teacher, schedule_text, seed_roles, student_frame, teacher_frame)
from .items import Missing, collect, needs_results

__all__ = [
    "CHAPTER", "IMAGE_SHAPE", "IMAGE_BITS", "N_CLASSES", "ACTIVE_K", "SAMPLE_FRACTION", "EQUAL_STORAGE", "BANDS",
    "TEACHER_BAND", "RATIO_BAND", "PAPER_PARAM_RATIO", "TEACHER_TARGET", "SMOKE_DATA", "PROBE_DATA",
    "Teacher", "Generator", "LenetStudents", "MlpStudents", "CodeStudents", "TEACHER", "GENERATORS", "STUDENTS",
    "settings", "seeds", "storage_accounting", "accounting_rows", "teacher", "teacher_rows", "generators",
    "generator_summary", "students", "pools", "summarize", "lr_cells", "compare_table", "table_view",
    "figure4_table", "TABLES", "recollections",
]

CHAPTER = "distill-mnist"
N_CLASSES = 10
#: verdict bands (percentage points of test accuracy) by number of episodes, stated in the chapter
#: before the results: near chance (10, 100 episodes) a student is mostly its initialisation
BANDS = {10: 10.0, 100: 10.0, 1000: 3.0, 10000: 1.0, 100000: 1.0}
TEACHER_BAND = 0.2
#: storage ratios: agree within 2% of the paper's value (its ratios are printed as round numbers)
RATIO_BAND = 0.02
#: section 5.1, Figure 4 text: "the larger model's parameter storage is 7.4x more than the total
#: storage of parameters and buffer combined for the smaller model".
PAPER_PARAM_RATIO = paper.PARAM_RATIO_168_VS_38
#: the teacher this chapter aims for (the paper's is 99.29%)
TEACHER_TARGET = 99.2
SAMPLINGS = (("random", 1), ("active", ACTIVE_K))

#: smoke: 2,000 training, 300 validation and 300 test images; probes: the paper's shapes, few images
SMOKE_DATA = MnistData(n_train=2000, n_val=300, n_test=300)
PROBE_DATA = MnistData(n_train=512, n_val=100, n_test=100)


# ------------------------------------------------------------------------------------------------
# configuration: the paper profile in one place, the smoke and probe profiles derived from it
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Teacher(TeacherConfig):
    """The LeNet teacher. Paper profile: the 50,000 training images, 500 epochs (section 5.1: "Each
    model is trained for 500 epochs"), minibatches of 64, Adam at 1e-3 for 375 epochs then 1e-4 (the
    paper names no optimiser or schedule), the epoch with the best validation accuracy kept."""
    data: object = MnistData()
    arch: str = "lenet"
    nf: int | None = None
    epochs: int = 500
    batch_size: int = 64
    schedule: tuple = ((375, 1e-3), (500, 1e-4))
    select: str = "val"

    def smoke(self) -> "Teacher":
        return replace(self, data=SMOKE_DATA, epochs=1, batch_size=32, schedule=((1, 1e-3),))

    def probe(self) -> "Teacher":
        return replace(self, data=PROBE_DATA, epochs=2, schedule=((1, 1e-3), (2, 1e-4)))


@dataclass(frozen=True)
class Generator(GeneratorConfig):
    """A recollection generator (appendix A.2: 168, 62 or 38 two-way variables). Paper profile: the
    50,000 training images, 500 epochs (section 5.1), minibatches of 128, Adam 1e-3, BCE through the
    straight-through Gumbel-softmax at temperature 1, the distortion of 10,000 random training images
    after every epoch. Smoke: the sizes eq 4 picks for the 2,000 smoke images (so that 10x, 50x and
    100x still mean a tenth, a fiftieth and a hundredth of them), 2 epochs at minibatches of 32."""
    data: object = MnistData()
    epochs: int = 500
    batch_size: int = 128
    lr: float = 1e-3
    curve_images: int = 10_000

    def smoke(self) -> "Generator":
        c, l = eq4_sizes(SMOKE_DATA.n_train)[self.name]
        return replace(self, c=c, l=l, data=SMOKE_DATA, epochs=2, batch_size=32, curve_images=200)

    def probe(self) -> "Generator":
        return replace(self, data=PROBE_DATA, epochs=1, curve_images=PROBE_DATA.n_val)


_SMOKE_STUDENTS = dict(data=SMOKE_DATA, seeds=(0, 1), lrs=(1e-3,), chunk=100, select_on=None)


@dataclass(frozen=True)
class LenetStudents(StudentConfig):
    """Table 1: LeNet students. Paper profile: all 8 columns, random and active (k = 10) sampling,
    learning rates 1e-3 and 1e-4 (appendix A.2; the better one on validation is reported), 5 runs
    (section 5), one example per update, evaluated after 10, 100, 1,000, 10,000 and 100,000 episodes
    on the 10,000 validation and 10,000 test images. Smoke: 5 columns, 2 runs, 1e-3, 100 episodes."""
    data: object = MnistData()
    arch: str = "lenet"
    nf: int | None = None
    columns: tuple = tuple(paper.TABLE_COLUMNS)
    samplings: tuple = SAMPLINGS
    lrs: tuple = tuple(float(v) for v in paper.LR_DISTILL)
    seeds: tuple = (0, 1, 2, 3, 4)
    episodes: tuple = tuple(paper.EPISODES)

    def smoke(self) -> "LenetStudents":
        return replace(self, columns=("Real Data", "1% Sample", "Real x / Teacher y", "10x Compress", "100x Compress"),
                       episodes=(10, 50), **_SMOKE_STUDENTS)

    def probe(self) -> "LenetStudents":
        return replace(self, data=PROBE_DATA, episodes=(3,))


@dataclass(frozen=True)
class MlpStudents(LenetStudents):
    """Table 2: the MLP student (two hidden layers of 300), otherwise as Table 1. Smoke: the
    equal-storage pair 1% Sample / 100x Compress, 2 runs, 1e-3, 300 episodes."""
    arch: str = "mlp"

    def smoke(self) -> "MlpStudents":
        return replace(self, columns=("1% Sample", "100x Compress"), episodes=(10, 100, 300), **_SMOKE_STUDENTS)


@dataclass(frozen=True)
class CodeStudents(LenetStudents):
    """Figure 4's code sampling: LeNet students, random sampling, on uniformly random codes of the
    larger and the smaller generator (168 and 38 variables), decoded and labelled by the teacher, a
    fresh code per episode; learning rates, runs and episodes as Table 1."""
    columns: tuple = ()
    samplings: tuple = (("random", 1),)
    code_sampling: tuple = ("10x", "100x")

    def smoke(self) -> "CodeStudents":
        return replace(self, episodes=(10, 50), **_SMOKE_STUDENTS)


TEACHER = Teacher()
GENERATORS = {g: Generator(g, int(c), int(l)) for g, (c, l) in paper.MNIST_GENERATORS.items()}
STUDENTS = {"students-lenet": LenetStudents(), "students-mlp": MlpStudents(), "code-sampling": CodeStudents()}


def _register_all():
    register_teacher(CHAPTER, TEACHER, "LeNet teacher (section 5.1)", priority=10)
    for i, (g, cfg) in enumerate(GENERATORS.items()):
        register_generator(CHAPTER, cfg, f"generator {g}: ({cfg.c}, {cfg.l}) and its buffer", priority=20 + i)
    register_students(CHAPTER, "students-lenet", STUDENTS["students-lenet"], "Table 1: LeNet students", priority=30)
    register_students(CHAPTER, "students-mlp", STUDENTS["students-mlp"], "Table 2: MLP students", priority=31)
    register_students(CHAPTER, "code-sampling", STUDENTS["code-sampling"], "Figure 4: code-sampling students",
                      priority=32)


_register_all()


def _cfg(name: str, ctx):
    """The config of item ``name`` at ``ctx``'s profile, as the item runs it (with the notebook's seeds)."""
    return item_config(f"{CHAPTER}/{name}", ctx)


def settings(ctx) -> pd.DataFrame:
    """The chapter's settings at ``ctx``'s profile, one row per kind of item."""
    t = _cfg("teacher", ctx)
    gens = [_cfg(f"generator-{g}", ctx) for g in GENERATORS]
    rows = [config_row("data", t.data.describe(), "teacher, generators, buffers and real pools train on the training "
                       "images; validation picks the teacher's epoch and the students' learning rate; test reports"),
            config_row("teacher", "LeNet (20 and 50 filters of 5x5, 500 hidden units)",
                       f"{t.epochs} epoch{'s' * (t.epochs != 1)}, batch {t.batch_size}, Adam "
                       f"{schedule_text(t.schedule, t.epochs)}, "
                       f"best-validation epoch kept"),
            generators_row(gens)]
    for name in STUDENTS:
        s = _cfg(name, ctx)
        what = ", ".join(s.columns) if s.columns else "code sampling " + ", ".join(s.code_sampling)
        rows.append(config_row(name, what,
                               f"{s.arch}, {' and '.join(n for n, _ in s.samplings)} sampling"
                               f"{f' (k = {ACTIVE_K})' if len(s.samplings) > 1 else ''}, "
                               f"lr {', '.join(f'{v:g}' for v in s.lrs)}, runs {', '.join(map(str, s.seeds))}, "
                               f"episodes {', '.join(f'{e:,}' for e in s.episodes)}: {s.groups()} students fused"))
    return pd.DataFrame(rows)


def seeds(profile: str = "paper") -> dict:
    """``{role: seed}`` of every seed the chapter's configs use at ``profile`` (no two are equal)."""
    pick = (lambda c: c) if profile == "paper" else (lambda c: c.smoke())
    return seed_roles(pick(TEACHER), [pick(g) for g in GENERATORS.values()], [pick(s) for s in STUDENTS.values()])


# ------------------------------------------------------------------------------------------------
# eq 4: the storage of the three generators (no training)
# ------------------------------------------------------------------------------------------------
def storage_accounting(n_examples: int = 50000) -> pd.DataFrame:
    """Eq 4 for the generators of appendix A.2 (appendix A's architecture: c*l/4 filters).

    Per generator: bits per code (eq 1), the per-sample ratio ``6272 / bits`` (section 5.1: 37x,
    101x, 165x), parameters ``|theta|`` at 32 bits, the buffer of ``n_examples`` codes, and the
    total compression ``n * 6272 / (n * bits + 32 |theta|)`` (appendix A.2: 10x, 50x, 100x), with
    the lossless sample of equal storage it is compared with.
    """
    rows = []
    for name, (c, l) in paper.MNIST_GENERATORS.items():
        vae = CategoricalVAE(c, l, IMAGE_SHAPE)
        bits = accounting.sbe_bits(c, l)
        buf = RecollectionBuffer(n_examples, c, l)
        params = accounting.param_count(vae)
        pbits = accounting.param_bits(vae)
        total = buf.code_bits_total + pbits
        dataset = n_examples * IMAGE_BITS
        col = f"{name} Compress"
        rows.append(dict(generator=name, c=c, l=l, filters=vae.latent_channels, bits_per_code=bits,
                         per_sample_ratio=IMAGE_BITS / bits, paper_per_sample=paper.PER_SAMPLE_RATIOS[c],
                         params=params, param_bits=pbits, buffer_bits=buf.code_bits_total, total_bits=total,
                         dataset_bits=dataset, total_ratio=dataset / total, paper_total=float(name[:-1]),
                         equal_storage_images=total / IMAGE_BITS, sample_column=EQUAL_STORAGE[col],
                         sample_images=round(SAMPLE_FRACTION[EQUAL_STORAGE[col]] * n_examples)))
    return pd.DataFrame(rows)


def accounting_rows(acct: pd.DataFrame) -> pd.DataFrame:
    """Paper beside ours for the ratios of eq 4 and section 5.1 (band: 2% of the paper's value)."""
    out = []
    for _, r in acct.iterrows():
        for what, ours, pap in (("per-sample compression", r.per_sample_ratio, r.paper_per_sample),
                                ("total compression (eq 4)", r.total_ratio, r.paper_total)):
            out.append(report.compare([dict(generator=r.generator, quantity=what, paper=pap, ours=ours)],
                                      RATIO_BAND * pap))
    big = acct[acct.generator == "10x"].iloc[0]
    small = acct[acct.generator == "100x"].iloc[0]
    ratio = big.param_bits / small.total_bits
    out.append(report.compare([dict(generator="10x vs 100x", quantity="params of 10x / total of 100x",
                                    paper=PAPER_PARAM_RATIO, ours=ratio)], RATIO_BAND * PAPER_PARAM_RATIO))
    return pd.concat(out, ignore_index=True)


# ------------------------------------------------------------------------------------------------
# the teacher and the generators
# ------------------------------------------------------------------------------------------------
def teacher(ctx) -> pd.DataFrame | Missing:
    """The LeNet teacher (item ``teacher``): one row per epoch (lr, training loss, validation and test
    accuracy); ``chosen`` marks the epoch kept (best validation accuracy)."""
    return teacher_frame(ctx, CHAPTER)


@needs_results
def teacher_rows(teacher_df: pd.DataFrame) -> pd.DataFrame:
    """The teacher's test accuracy (at the epoch chosen on validation) beside the paper's."""
    row = teacher_df[teacher_df.chosen].iloc[0]
    return report.compare([dict(model="LeNet teacher", epochs=len(teacher_df), kept=int(row.epoch),
                                **{"validation accuracy": float(row.val_acc)},
                                metric="test accuracy (%)", paper=paper.MNIST_TEACHER_ACC, ours=float(row.test_acc),
                                runs=1)], TEACHER_BAND)


def generators(ctx) -> pd.DataFrame | Missing:
    """The generator items: one row per (generator, epoch) with the mean training loss (BCE) and the
    distortion of ``curve_images`` random training images (same images and noise every epoch)."""
    return generator_frame(ctx, CHAPTER, list(GENERATORS))


@needs_results
def generator_summary(gens: pd.DataFrame) -> pd.DataFrame:
    """Final numbers of each generator: parameters, epochs, distortion (appendix A.1's metric, one
    stochastic pass over the training images) beside Table 5's value for the same (c, l) where it has
    one, the buffer (codes, bits per code, bytes) and eq 4 at this profile's number of images."""
    f = gens.attrs["final"].copy()
    f["table5_distortion"] = [paper.TABLE5.get((c, l), (None, np.nan))[1] for c, l in zip(f.c, f.l)]
    total = f.buffer_codes * f.bits_per_code + 32 * f.params
    f["total_ratio_here"] = f.buffer_codes * IMAGE_BITS / total
    return f


def recollections(ctx, n: int = 10) -> list | Missing:
    """What :func:`recollect.figures.distill_mnist_recollections` draws (section 5.1's recollections):
    ``[(label, images)]``, images float in [0, 1] of shape ``(n, 1, 28, 28)``: the first ``n`` training
    images (the ones the buffers encoded first), then per generator their recollections (the codes stored
    for exactly these images, decoded) and ``n`` decoded uniformly random codes (what code sampling trains
    on; generator seed 7)."""
    keys = [f"{CHAPTER}/generator-{g}" for g in GENERATORS]
    got, missing = collect(ctx, keys)
    if not got:
        return Missing(missing)
    x = _cfg("generator-10x", ctx).data.splits().train.x[:n]  # the images the buffers encoded
    rows = [("real", x.float() / 255)]
    for k in keys:
        if k not in got:
            continue
        vae, buf = load_generator(got[k])
        g = k.rsplit("-", 1)[1]
        rows.append((f"{g} buffer ({vae.c}, {vae.l})", vae.decode(buf.codes()[:, :n])[0]))
        rand = torch.randint(0, vae.l, (1, n, vae.c), generator=generator(7))
        rows.append((f"{g} random code", vae.decode(rand)[0]))
    return rows


# ------------------------------------------------------------------------------------------------
# the students
# ------------------------------------------------------------------------------------------------
def students(ctx) -> pd.DataFrame | Missing:
    """Every student of the chapter (items ``students-lenet``, ``students-mlp``, ``code-sampling``):
    one row per (arch, source, sampling, lr, seed, episodes, split) with the accuracy in percent. At
    the paper profile, the items not made yet are left out and named in ``attrs["missing"]``."""
    return student_frame(ctx, [f"{CHAPTER}/{n}" for n in STUDENTS])


def pools(students_df) -> pd.DataFrame | Missing:
    """What the students see: images per source and how the teacher labels its recollections."""
    return pool_frame(students_df)


# ------------------------------------------------------------------------------------------------
# summaries: the better learning rate per cell (on validation), test accuracy reported
# ------------------------------------------------------------------------------------------------
@needs_results
def summarize(students: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, source, sampling, episodes): the learning rate with the higher mean validation
    accuracy over seeds (the only one when a single rate was run), then the mean, standard deviation
    (ddof=1) and number of runs of *test* accuracy at that rate."""
    keys = ["arch", "source", "sampling", "episodes"]
    test = students[students.split == "test"]
    val = students[students.split == "val"]
    if len(val):
        vm = val.groupby(keys + ["lr"], sort=False)["accuracy"].mean().reset_index()
        vm = vm.sort_values("lr", ascending=False, kind="stable")  # ties: the larger rate
        best = vm.loc[vm.groupby(keys, sort=False)["accuracy"].idxmax()].rename(columns={"accuracy": "val_mean"})
    else:
        best = test.groupby(keys + ["lr"], sort=False).size().reset_index()[keys + ["lr"]]
        best["val_mean"] = np.nan
    sel = test.merge(best[keys + ["lr"]], on=keys + ["lr"])
    out = report.mean_spread(sel, keys + ["lr"], "accuracy").merge(best, on=keys + ["lr"])
    out = out[keys + ["lr", "val_mean", "mean", "std", "count"]]
    return out.rename(columns={"std": "sd", "count": "runs"})


@needs_results
def lr_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """How many cells (column x episodes) kept each learning rate, per architecture and sampling."""
    out = summary.groupby(["arch", "sampling", "lr"], sort=False).size().rename("cells").reset_index()
    out["lr"] = [f"{v:g}" for v in out["lr"]]
    return out


#: architecture -> (the paper's table, its numbers): Table 1 (LeNet students), Table 2 (MLP)
TABLES = {"lenet": ("Table 1", paper.TABLE1), "mlp": ("Table 2", paper.TABLE2)}


def _rows(summary: pd.DataFrame, arch: str) -> list:
    name, tab = TABLES[arch]
    s = summary[(summary.arch == arch) & summary.source.isin(paper.TABLE_COLUMNS)]
    rows = []
    for sampling in ("random", "active"):
        for ep in paper.EPISODES:
            for col in paper.TABLE_COLUMNS:
                hit = s[(s.sampling == sampling) & (s.episodes == ep) & (s.source == col)]
                if len(hit):
                    h = hit.iloc[0]
                    rows.append(dict(sampling=sampling, episodes=ep, column=col, lr=f"{h.lr:g}",
                                     paper=tab[sampling][(ep, col)], ours=h["mean"], sd=h.sd, runs=int(h.runs)))
    return rows


@needs_results
def compare_table(summary: pd.DataFrame, arch: str) -> pd.DataFrame:
    """Table 1 (``lenet``) or 2 (``mlp``): paper beside ours for every cell we ran, with a verdict
    against the band of its number of episodes (:data:`BANDS`); the suspect cells of Table 2
    (``recollect.paper.SUSPECT_CELLS``) get no verdict."""
    name, _ = TABLES[arch]
    rows = _rows(summary, arch)
    out = []
    for ep in paper.EPISODES:
        sub = [r for r in rows if r["episodes"] == ep]
        if not sub:
            continue
        nv = {}
        for r in sub:
            if (name, r["sampling"], ep, r["column"]) in paper.SUSPECT_CELLS:
                key = tuple(v for k, v in r.items() if k not in ("paper", "ours", "sd", "runs"))
                nv[key] = "the paper repeats the random half's value here (likely a copying slip)"
        out.append(report.compare(sub, BANDS[ep], no_verdict=nv))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


@needs_results
def table_view(summary: pd.DataFrame, arch: str, digits: int = 2) -> pd.DataFrame:
    """The table in the paper's layout: ``ours ± sd`` with the paper's value in brackets."""
    rows = _rows(summary, arch)
    recs = {}
    for r in rows:
        recs.setdefault((r["sampling"], r["episodes"]), {})[r["column"]] = (
            f"{r['ours']:.{digits}f} ± {r['sd']:.{digits}f} ({r['paper']:.2f})")
    df = pd.DataFrame.from_dict(recs, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=["sampling", "episodes"])
    return df[[c for c in paper.TABLE_COLUMNS if c in df.columns]]


@needs_results
def figure4_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Figure 4 as numbers: LeNet students, random sampling, buffer against code sampling for the
    larger and the smaller generator of the run."""
    s = summary[(summary.arch == "lenet") & (summary.sampling == "random")]
    order = list(GENERATORS)  # 10x (the larger model) first
    codes = sorted({src[len("Code sampling "):] for src in s.source if src.startswith("Code sampling ")},
                   key=order.index)
    rows = []
    for g in codes:
        for how, src in (("buffer", f"{g} Compress"), ("code", f"Code sampling {g}")):
            for _, h in s[s.source == src].iterrows():
                rows.append(dict(model=f"{g} generator", sampling=how, episodes=int(h.episodes), lr=f"{h.lr:g}",
                                 accuracy=h["mean"], sd=h.sd, runs=int(h.runs)))
    return pd.DataFrame(rows)
