"""Chapter "distortion versus compression": paper section 3, Figure 2, Tables 5 and 6, eqs 1-4.

Items (``recollect.experiments.items``; each a result in ``results/distortion/`` at the paper profile):

* ``ae-categorical-<c>-<l>`` -- one categorical autoencoder (c, l) of Table 5 trained on the MNIST
  training images at the four learning rates of appendix A.1 *as one fused model* (``groups=4``, one
  learning rate per group): training distortion per learning rate, per-epoch loss and distortion
  curves, |theta|. The four widest rows train at the two rates of :data:`WIDE_LRS` (a budget
  reduction; :func:`lr_evidence` shows what it rests on). The loss-choice experiment adds
  ``ae-categorical-<c>-<l>-kl`` (BCE + KL).
* ``ae-continuous-<h>`` -- the same for the 6 continuous autoencoders of Table 6.
* ``jpeg`` -- Figure 2's JPEG points (Pillow, qualities 1-100, header subtracted); CPU only.
* ``baselines`` -- beyond the paper: PCA, a k-means codebook and plain downsampling.

Tables read these payloads (:func:`table5`, :func:`table6`, :func:`loss_choice`,
:func:`jpeg`, :func:`baselines`); eqs 3 and 4 (:func:`budget_search`) are accounting only. The
figures are in ``recollect.figures`` (``distortion_*``), the claims in ``recollect.claims.distortion``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from .. import accounting, baselines as codecs, data, paper
from ..grouped import GroupedAdam
from ..models import CategoricalVAE, ContinuousAE
from ..models.vae import conv_geometry
from ..models.vae import vae_param_bits as _vae_param_bits
from ..train.autoencoder import distortion as ae_distortion
from ..train.autoencoder import train_autoencoder
from ..train.checkpoint import Checkpointer
from ..train.probe import tick
from ..utils import generator, seed_everything
from .items import Item, Loop, Missing, collect, needs_results, register

__all__ = [
    "BAND", "IMAGE_SHAPE", "IMAGE_BITS", "SMOKE_ROWS5", "SMOKE_ROWS6", "AEConfig", "JpegConfig", "BaselineConfig",
    "settings", "table5", "table6", "loss_choice", "jpeg", "baselines",
    "training_curves", "paper_spread", "table5_rows", "table6_rows", "lr_table", "compression_check", "matched_bits",
    "kmeans_table", "Bf16Config", "bf16_check", "bf16_text", "BF16_FILTERS",
    "budget_search", "vae_param_bits", "best_rows", "WIDE_LRS", "lr_evidence", "lr_evidence_text",
]

CHAPTER = "distortion"
#: Tolerance band of the verdicts on distortion (absolute, mean |error| with pixels / 255); the
#: chapter justifies it: the paper's own points at one compression ratio spread by up to 0.009.
BAND = 0.01
IMAGE_SHAPE = (1, 28, 28)
IMAGE_BITS = accounting.image_bits(IMAGE_SHAPE)  # 6,272 (section 3)
#: smoke profile: the cheapest rows (smallest c*l, hence fewest filters) and the smallest h
SMOKE_ROWS5 = ((6, 2), (20, 2), (8, 6))
SMOKE_ROWS6 = (1, 2, 3)
#: the loss comparison: paper profile rows, smoke row
LOSS_ROWS = ((38, 2), (48, 10), (168, 2))
SMOKE_LOSS_ROWS = ((6, 2),)
KL_WEIGHT = 1.0
_LATENT = conv_geometry(IMAGE_SHAPE[1])[0][2] ** 2  # 2x2 map: a latent of 4 values per channel


# ------------------------------------------------------------------------------------------------
# configuration: the paper profile in one place, the smoke and probe profiles derived from it
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AEConfig:
    """One autoencoder of Figure 2 trained at every learning rate of appendix A.1 as one fused model.

    Paper profile: the 50,000 MNIST training images, 15 epochs (the paper names none; the chapter
    shows the curves), minibatches of 128, Adam at 1e-2 .. 1e-5, reconstruction loss (BCE) only
    unless ``kl_weight``, Gumbel-softmax temperature 1 (section 4.2), seed 0 (one run per
    architecture, as the paper reports one number per architecture)."""
    kind: str                    # "categorical" (size = (c, l)) or "continuous" (size = (h,))
    size: tuple
    n_train: int = 50_000
    epochs: int = 15
    batch_size: int = 128
    lrs: tuple = tuple(float(v) for v in paper.LR_SWEEP_FIG2)
    kl_weight: float = 0.0
    tau: float = 1.0
    curve_images: int = 10_000
    eval_batch: int = 1000
    seed: int = 0
    #: "fp32", or "auto": bf16 autocast when the ``bf16-check`` item found it within the band (the
    #: large architectures, where it pays; issue 14)
    precision: str = "fp32"

    def smoke(self) -> "AEConfig":
        return replace(self, n_train=1000, epochs=2, curve_images=250, precision="fp32")

    def probe(self) -> "AEConfig":
        """The paper's shapes for a few steps (counts, GPU preflight)."""
        return replace(self, n_train=3 * self.batch_size, epochs=1, curve_images=self.eval_batch // 4)

    def dry(self) -> "AEConfig":
        """(Of a probe config.) The dry run's: one training minibatch at the paper's shapes, the curve
        and the final distortion on a few images (whether the item runs, not how fast)."""
        return replace(self, n_train=self.batch_size, curve_images=16)

    @property
    def label(self) -> str:
        s = self.size
        return f"(c, l) = ({s[0]}, {s[1]})" if self.kind == "categorical" else f"h = {s[0]}"


#: architectures with at least this many filters per layer (c*l/4) train in bf16 when the check allows,
#: and at the learning rates of ``WIDE_LRS``: (50, 18), (209, 8), (313, 4), (392, 3)
BF16_FILTERS = 200

#: The learning rates of the widest rows of Table 5 (``BF16_FILTERS``), a reduction forced by the GPU
#: budget (issue 14): those four rows hold about 80 % of the chapter's arithmetic, and a fused step's
#: arithmetic grows with the number of rates, so two rates instead of four about halve their cost.
#: Appendix A.1 trains every architecture at 1e-2 ... 1e-5 and reports the best; these two are the ones
#: that won every row trained at all four (the chapter shows the count, :func:`lr_evidence`). Every
#: other row trains at all four.
WIDE_LRS = tuple(float(v) for v in paper.LR_SWEEP_FIG2[:2])


@dataclass(frozen=True)
class Bf16Config:
    """Issue 14: may the large autoencoders train in bf16? The two widest of Table 5 trained for
    ``epochs`` epochs at ``lr`` twice from the same seed, in float32 and under bf16 autocast; bf16 is
    used only if every training distortion stays within ``band`` of float32's (the chapter's own
    verdict band). Parameters and optimizer state stay float32 either way."""
    rows: tuple = ((392, 3), (209, 8))
    n_train: int = 50_000
    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    eval_batch: int = 1000
    seed: int = 0
    band: float = BAND

    def smoke(self) -> "Bf16Config":
        return replace(self, rows=((20, 2),), n_train=600, epochs=1)

    def probe(self) -> "Bf16Config":
        return replace(self, n_train=3 * self.batch_size, epochs=1)

    def dry(self) -> "Bf16Config":
        """(Of a probe config.) One minibatch per row and precision."""
        return replace(self, n_train=self.batch_size)


@dataclass(frozen=True)
class JpegConfig:
    """Figure 2's JPEG points: Pillow at qualities 1-100 on the first 10,000 training images (A.1)."""
    images: int = 10_000
    qualities: tuple = (1, 25, 50, 75, 100)

    def smoke(self) -> "JpegConfig":
        return replace(self, images=500)

    def probe(self) -> "JpegConfig":
        return replace(self, images=100)


@dataclass(frozen=True)
class BaselineConfig:
    """Beyond the paper: classical codecs on the autoencoders' training images (see :func:`baselines`)."""
    n_train: int = 50_000
    kmeans_iters: int = 30
    seed: int = 0
    rows5: tuple = tuple(paper.TABLE5)

    def smoke(self) -> "BaselineConfig":
        return replace(self, n_train=1000, kmeans_iters=10, rows5=SMOKE_ROWS5)

    def probe(self) -> "BaselineConfig":
        return replace(self, n_train=1024, kmeans_iters=2)

    def grid(self) -> dict:
        """PCA and downsampling settings: a sweep over Figure 2's range of bits per image, plus the
        settings that match each Table 5 row's bits (:func:`matched_bits`)."""
        row_bits = [accounting.sbe_bits(c, l) for c, l in self.rows5]

        def grid(base, need, top):
            return sorted({v for v in list(base) + [n for n in need if n >= 1] if v <= top})
        return dict(
            pca={8: grid([1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 98], [b // 8 for b in row_bits], 98),
                 32: grid([1, 2, 3, 4, 6, 8, 12, 16, 24], [b // 32 for b in row_bits], 24)},
            downsample={8: grid(range(1, 15), [math.isqrt(b // 8) for b in row_bits], 14),
                        1: grid([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28], [math.isqrt(b) for b in row_bits], 28)})


def _ae_name(kind: str, size, kl: bool = False) -> str:
    return f"ae-{kind}-{'-'.join(str(int(v)) for v in size)}" + ("-kl" if kl else "")


def _make_model(cfg: AEConfig, groups: int):
    if cfg.kind == "categorical":
        c, l = cfg.size
        return CategoricalVAE(c, l, IMAGE_SHAPE, groups=groups, tau=cfg.tau)
    return ContinuousAE(cfg.size[0], IMAGE_SHAPE, groups=groups)


def _train_images(n: int) -> torch.Tensor:
    return data.mnist("train").x[:n]


# ------------------------------------------------------------------------------------------------
# the items
# ------------------------------------------------------------------------------------------------
def train_architecture(job) -> dict:
    """Train one architecture at every learning rate of ``cfg.lrs`` as one grouped model (appendix
    A.1: Adam, learning rates 1e-2 ... 1e-5, the best training distortion is reported).

    Payload: ``distortion`` [G] (one stochastic pass over all training images), ``loss``
    [epochs][G] (mean training loss per epoch), ``curve`` [epochs][G] (distortion on the first
    ``curve_images`` images after each epoch, the same Gumbel noise every epoch), ``params``
    (|theta| of one model). Resumable: a checkpoint about every 90 s (machine-local), and at an
    epoch's end where the next epoch might not finish before the job's deadline it saves and stops
    (``Job.boundary``)."""
    cfg, dev = job.cfg, job.device
    x = _train_images(cfg.n_train).to(dev)
    seed_everything(cfg.seed)
    groups = len(cfg.lrs)
    model = _make_model(cfg, groups).to(dev)
    lrs = torch.tensor(cfg.lrs, dtype=torch.float32, device=dev)
    opt = GroupedAdam(model.parameters(), lr=lrs)
    shuffle = generator(cfg.seed)  # CPU generator: shuffles, and the Gumbel noise when training on the CPU
    ck = Checkpointer(job.checkpoint_dir)
    state = dict(epoch=0, loss=[], curve=[])
    saved = ck.load({"shuffle": shuffle})
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        opt.set_lr(lrs)
        state = saved["state"]
    sub = x[: cfg.curve_images]

    def on_epoch_end(epoch, model, opt, losses):
        state["loss"].append([float(v) for v in losses[-1]])
        d = ae_distortion(model, sub, cfg.eval_batch, generator(cfg.seed + 1, dev))
        state["curve"].append([float(v) for v in d])
        state["epoch"] = epoch + 1
        job.boundary(ck, lambda: dict(model=model.state_dict(), opt=opt.state_dict(), state=state),
                     {"shuffle": shuffle}, last=epoch + 1 >= cfg.epochs, what=cfg.label)

    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if job.dep("bf16-check")["use_bf16"] else "fp32"
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda" or prev
    try:
        train_autoencoder(model, x, cfg.epochs, cfg.batch_size, lrs, shuffle, kl_weight=cfg.kl_weight, optimizer=opt,
                          start_epoch=state["epoch"], on_epoch_end=on_epoch_end, progress=job.progress,
                          desc=cfg.label, amp_dtype=torch.bfloat16 if precision == "bf16" else None)
    finally:
        torch.backends.cudnn.benchmark = prev
    final = ae_distortion(model, x, cfg.eval_batch, generator(cfg.seed + 2, dev))
    ck.done()
    return dict(lrs=list(cfg.lrs), distortion=[float(v) for v in final], loss=state["loss"], curve=state["curve"],
                params=accounting.param_count(model, groups=groups), precision=precision)


def run_bf16_check(job) -> dict:
    """Train each row of ``cfg.rows`` twice (float32, then bf16 autocast) from the same seed and
    shuffles; ``use_bf16`` when every distortion differs by at most ``cfg.band``."""
    cfg, dev = job.cfg, job.device
    x = _train_images(cfg.n_train).to(dev)
    rows = []
    for c, l in cfg.rows:
        got = {}
        for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            seed_everything(cfg.seed)
            model = CategoricalVAE(c, l, IMAGE_SHAPE, groups=1).to(dev)
            opt = GroupedAdam(model.parameters(), lr=cfg.lr)
            train_autoencoder(model, x, cfg.epochs, cfg.batch_size, cfg.lr, generator(cfg.seed), optimizer=opt,
                              progress=job.progress, desc=f"({c}, {l}) {name}", amp_dtype=amp)
            got[name] = float(ae_distortion(model, x, cfg.eval_batch, generator(cfg.seed + 2, dev))[0])
        rows.append(dict(c=c, l=l, fp32=got["fp32"], bf16=got["bf16"], diff=got["bf16"] - got["fp32"]))
    table = pd.DataFrame(rows)
    return {"table": table, "band": cfg.band, "use_bf16": bool((table["diff"].abs() <= cfg.band).all())}


@needs_results
def bf16_text(b16: pd.DataFrame) -> str:
    """The bf16 check's conclusion, one line."""
    use = b16.attrs.get("use_bf16")
    return ("bf16 for the large autoencoders: yes (every distortion within the band of float32's)" if use else
            "bf16 for the large autoencoders: no (a distortion differs by more than the band): they train in float32")


def _bf16_loops(cfg: Bf16Config) -> list:
    steps = 2 * len(cfg.rows) * cfg.epochs * math.ceil(cfg.n_train / cfg.batch_size)
    return [Loop("epochs", steps, captured=True), Loop("eval", 2 * len(cfg.rows) * math.ceil(cfg.n_train / cfg.eval_batch))]


def bf16_check(ctx) -> pd.DataFrame | Missing:
    """The bf16 check (one row per architecture: float32 and bf16 training distortion, difference);
    ``attrs["use_bf16"]``: whether the large autoencoders train in bf16."""
    got, missing = collect(ctx, [f"{CHAPTER}/bf16-check"])
    if not got:
        return Missing(missing)
    p = got[f"{CHAPTER}/bf16-check"]
    df = p["table"].copy()
    df.attrs["use_bf16"] = p["use_bf16"]
    return df


def _ae_loops(cfg: AEConfig) -> list:
    steps = cfg.epochs * math.ceil(cfg.n_train / cfg.batch_size)
    evals = cfg.epochs * math.ceil(cfg.curve_images / cfg.eval_batch) + math.ceil(cfg.n_train / cfg.eval_batch)
    return [Loop("epochs", steps, captured=True), Loop("eval", evals)]


def _wide(kind: str, size, kl: bool = False) -> bool:
    """One of Table 5's widest rows (``BF16_FILTERS`` filters per layer or more): bf16 when the check
    allows, and the learning rates of ``WIDE_LRS``."""
    return kind == "categorical" and not kl and size[0] * size[1] // _LATENT >= BF16_FILTERS


def _register_ae(kind: str, size, kl: bool, smoke_rows, priority: int, paper_row: bool = True):
    size = tuple(int(v) for v in size)
    name = _ae_name(kind, size, kl)
    large = _wide(kind, size, kl)
    base = AEConfig(kind, size, kl_weight=KL_WEIGHT if kl else 0.0, precision="auto" if large else "fp32",
                    **(dict(lrs=WIDE_LRS) if large else {}))
    twin_size = smoke_rows[0] if kind == "categorical" else (smoke_rows[0],)
    in_smoke = (size in [tuple(r) for r in smoke_rows]) if kind == "categorical" else size[0] in smoke_rows
    twin = None if in_smoke else _ae_name(kind, twin_size, kl)
    what = {"categorical": "Table 5", "continuous": "Table 6"}[kind] + (" loss choice (BCE + KL)" if kl else "")
    register(Item(
        CHAPTER, name, f"{what}: {base.label} at {len(base.lrs)} learning rates",
        config=lambda profile, base=base: base if profile == "paper" else base.smoke(),
        run=train_architecture, loops=_ae_loops, priority=priority, stage="beyond" if kl else "first",
        versioned_by=twin, data=("mnist",), depends=("bf16-check",) if large else (), resumable=True, paper=paper_row,
        reduction=(f"learning rates {', '.join(f'{v:.0e}' for v in WIDE_LRS)} only (appendix A.1 has four): about "
                   "half the cost; every row trained at all four did best at one of these" if large else "")))


def _register_all():
    register(Item(CHAPTER, "bf16-check", "bf16 against float32 for the large autoencoders (2 epochs)",
                  config=lambda p: Bf16Config() if p == "paper" else Bf16Config().smoke(), run=run_bf16_check,
                  loops=_bf16_loops, priority=1, data=("mnist",)))
    for i, (c, l) in enumerate(sorted(paper.TABLE5, key=lambda r: r[0] * r[1])):
        _register_ae("categorical", (c, l), False, SMOKE_ROWS5, 10 + i)
    for i, h in enumerate(paper.TABLE6):
        _register_ae("continuous", (h,), False, SMOKE_ROWS6, 40 + i)
    for i, (c, l) in enumerate(LOSS_ROWS + SMOKE_LOSS_ROWS):
        # the smoke loss row is the KL items' smoke twin; the paper profile's loss table never reads it
        _register_ae("categorical", (c, l), True, SMOKE_LOSS_ROWS, 60 + i, paper_row=(c, l) in LOSS_ROWS)
    register(Item(CHAPTER, "jpeg", "Figure 2: JPEG points", config=lambda p: JpegConfig() if p == "paper" else JpegConfig().smoke(),
                  run=_run_jpeg, loops=lambda cfg: [Loop("jpeg", len(cfg.qualities))], priority=5, gpu=False,
                  data=("mnist",)))
    register(Item(CHAPTER, "baselines", "Beyond the paper: PCA, k-means, downsampling",
                  config=lambda p: BaselineConfig() if p == "paper" else BaselineConfig().smoke(),
                  run=_run_baselines, loops=_baseline_loops, priority=70, stage="beyond", data=("mnist",)))


def _ae_keys(kind: str, rows, kl: bool = False) -> list:
    return [f"{CHAPTER}/{_ae_name(kind, r if kind == 'categorical' else (r,), kl)}" for r in rows]


def settings(ctx) -> pd.DataFrame:
    """The chapter's settings at ``ctx``'s profile, one row per kind of item."""
    prof = "paper" if not ctx.smoke else "smoke"
    a = AEConfig("categorical", (6, 2)) if prof == "paper" else AEConfig("categorical", (6, 2)).smoke()
    j = JpegConfig() if prof == "paper" else JpegConfig().smoke()
    b = BaselineConfig() if prof == "paper" else BaselineConfig().smoke()
    rows5 = list(paper.TABLE5) if prof == "paper" else list(SMOKE_ROWS5)
    rows6 = list(paper.TABLE6) if prof == "paper" else list(SMOKE_ROWS6)
    loss_rows = LOSS_ROWS if prof == "paper" else SMOKE_LOSS_ROWS
    wide = [f"({c}, {l})" for c, l in rows5 if _wide("categorical", (c, l))]
    wide_note = (f" ({', '.join(wide)} at {', '.join(f'{v:.0e}' for v in WIDE_LRS)} only: protocol notes)"
                 if wide else "")
    return pd.DataFrame([
        {"experiment": "Table 5 (categorical)", "what": f"{len(rows5)} of {len(paper.TABLE5)} rows (c, l)",
         "settings": f"{a.n_train:,} MNIST training images, {a.epochs} epochs, batch {a.batch_size}, Adam at "
                     f"{', '.join(f'{v:.0e}' for v in a.lrs)} fused{wide_note}, BCE, tau {a.tau:g}, seed {a.seed}"},
        {"experiment": "Table 6 (continuous)", "what": f"{len(rows6)} of {len(paper.TABLE6)} rows h",
         "settings": "as Table 5, latent of 4h float32"},
        {"experiment": "loss choice", "what": ", ".join(f"({c}, {l})" for c, l in loss_rows),
         "settings": f"BCE against BCE + {KL_WEIGHT:g} KL to the uniform prior, as Table 5"},
        {"experiment": "JPEG", "what": f"qualities {', '.join(map(str, j.qualities))}",
         "settings": f"first {j.images:,} training images, header subtracted"},
        {"experiment": "baselines (beyond the paper)", "what": "PCA, k-means, downsampling",
         "settings": f"{b.n_train:,} training images, k-means {b.kmeans_iters} iterations, seed {b.seed}"},
    ])


def _results_frame(results: list, labels: list) -> pd.DataFrame:
    rows, curves = [], []
    for lab, r in zip(labels, results):
        for g, lr in enumerate(r["lrs"]):
            rows.append(dict(lab, lr=lr, distortion=r["distortion"][g], params=r["params"], lrs_run=len(r["lrs"])))
            for e, (lo, cu) in enumerate(zip(r["loss"], r["curve"])):
                curves.append(dict(lab, lr=lr, epoch=e + 1, train_loss=lo[g], curve_distortion=cu[g]))
    df = pd.DataFrame(rows)
    keys = [k for k in labels[0]]
    best = df.groupby(keys, sort=False)["distortion"].transform("min")
    df["best"] = df["distortion"] == best
    df.attrs["curves"] = pd.DataFrame(curves)
    return df


def training_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch curves of a :func:`table5` / :func:`table6` / :func:`loss_choice` table: one row per
    (architecture, lr, epoch) with the mean ``train_loss`` and ``curve_distortion`` (distortion on
    the first ``curve_images`` training images after that epoch)."""
    return df.attrs["curves"]


def _frame(ctx, kind: str, rows, kl_rows=None) -> pd.DataFrame | Missing:
    """The payloads of the architectures ``rows`` as one table (one row per architecture and lr);
    at the paper profile, rows not yet made are left out and listed in ``attrs["missing"]``."""
    labels, keys = [], []
    for r in rows:
        for kl in ([False] if kl_rows is None else [False, True]):
            keys.append(_ae_keys(kind, [r], kl)[0])
            if kind == "categorical":
                c, l = r
                bits = accounting.sbe_bits(c, l)
                lab = dict(c=c, l=l, bits=bits, capacity=accounting.capacity_bits(c, l),
                           compression=accounting.compression_ratio(IMAGE_BITS, bits))
            else:
                bits = accounting.continuous_bits(_LATENT * r)
                lab = dict(h=r, floats=_LATENT * r, bits=bits, compression=accounting.compression_ratio(IMAGE_BITS, bits))
            if kl_rows is not None:
                lab = dict(c=r[0], l=r[1], loss=f"BCE + {KL_WEIGHT:g} KL" if kl else "BCE")
            labels.append(lab)
    got, missing = collect(ctx, keys)
    if not got:
        return Missing(missing)
    present = [(lab, got[k]) for lab, k in zip(labels, keys) if k in got]
    df = _results_frame([p for _, p in present], [lab for lab, _ in present])
    df.attrs["missing"] = missing
    return df


def table5(ctx) -> pd.DataFrame | Missing:
    """Table 5 / Figure 2 (categorical): one row per (c, l, lr) with the training distortion.

    Columns: c, l, bits (eq 1), capacity (eq 2), compression (6272 / bits), lr, distortion, params
    (|theta| of one model), best (the learning rate kept)."""
    return _frame(ctx, "categorical", SMOKE_ROWS5 if ctx.smoke else list(paper.TABLE5))


def table6(ctx) -> pd.DataFrame | Missing:
    """Table 6 / Figure 2 (continuous): one row per (h, lr); the latent holds 4h floats of 32 bits."""
    return _frame(ctx, "continuous", SMOKE_ROWS6 if ctx.smoke else list(paper.TABLE6))


def loss_choice(ctx) -> pd.DataFrame | Missing:
    """The paper names no loss: BCE alone against BCE + KL to the uniform prior (weight
    ``KL_WEIGHT``, Jang et al. 2017), same (c, l), learning rates and epochs as Table 5.
    One row per (c, l, loss, lr). The BCE runs are the Table 5 items."""
    rows = SMOKE_LOSS_ROWS if ctx.smoke else LOSS_ROWS
    return _frame(ctx, "categorical", rows, kl_rows=rows)


def best_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`table5` / :func:`table6` / :func:`loss_choice` table at each
    architecture's best learning rate (the lowest training distortion; appendix A.1 reports the best),
    one row per architecture (and loss)."""
    return df[df["best"]].drop_duplicates([k for k in ("c", "l", "h", "loss") if k in df.columns])


@needs_results
def table5_rows(t5: pd.DataFrame) -> list:
    """Rows for ``report.compare``: Table 5 with the paper's distortion beside ours (best lr)."""
    rows = []
    for r in best_rows(t5).itertuples():
        rows.append({"c": r.c, "l": r.l, "bits": r.bits, "compression": round(r.compression, 3),
                     "lrs run": r.lrs_run, "best lr": f"{r.lr:.0e}", "paper": paper.TABLE5[(r.c, r.l)][1],
                     "ours": r.distortion, "runs": 1})
    return rows


@needs_results
def table6_rows(t6: pd.DataFrame) -> list:
    """Rows for ``report.compare``: Table 6 with the paper's distortion beside ours (best lr)."""
    rows = []
    for r in best_rows(t6).itertuples():
        rows.append({"h": r.h, "floats": r.floats, "compression": round(r.compression, 8),
                     "best lr": f"{r.lr:.0e}", "paper": paper.TABLE6[r.h][1], "ours": r.distortion, "runs": 1})
    return rows


@needs_results
def lr_table(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Training distortion at each learning rate (columns), one row per architecture."""
    keys = [k for k in ("c", "l", "h", "loss") if k in df.columns]
    out = df.pivot_table(index=keys, columns="lr", values="distortion", sort=False)
    out.columns = [f"lr {v:.0e}" for v in out.columns]
    return out.round(digits).reset_index()


def lr_evidence(*tables: pd.DataFrame) -> pd.DataFrame:
    """What :data:`WIDE_LRS` rests on: over the architectures of ``tables`` (:func:`table5`,
    :func:`table6`) trained at all four learning rates of appendix A.1, one row per rate with the number
    of architectures where it gave the best training distortion and how far its distortion stayed above
    the best one (``excess``: the smallest and the median, absolute, pixels / 255; ``least relative
    excess``: the smallest excess as a fraction of the best distortion)."""
    frames = [t.copy() for t in tables if isinstance(t, pd.DataFrame) and len(t)]
    for f in frames:
        f.attrs = {}  # the tables carry their curves there; concat would compare them
    if not frames:
        return pd.DataFrame(columns=["lr", "architectures", "best in", "least excess", "median excess",
                                     "least relative excess"])
    df = pd.concat(frames, ignore_index=True)
    # the rows trained at WIDE_LRS only, and those of them whose best rate is the sweep's lower edge
    # (where the untried 1e-4 might have done better)
    few = df[(df["lrs_run"] == len(WIDE_LRS)) & df["best"]]
    at_edge = few[np.isclose(few["lr"], min(WIDE_LRS))]
    full = df[df["lrs_run"] == len(paper.LR_SWEEP_FIG2)].copy()
    keys = [k for k in ("c", "l", "h") if k in full.columns]
    arch = full[keys].astype("string").fillna("-").agg("/".join, axis=1)
    best = full.groupby(arch)["distortion"].transform("min")
    full["excess"] = full["distortion"] - best
    full["relative"] = full["excess"] / best
    rows = []
    for lr in paper.LR_SWEEP_FIG2:
        g = full[np.isclose(full["lr"], lr)]
        rows.append({"lr": f"{lr:.0e}", "architectures": int(len(g)), "best in": int(g["best"].sum()),
                     "least excess": float(g["excess"][~g["best"]].min()) if (~g["best"]).any() else np.nan,
                     "median excess": float(g["excess"].median()) if len(g) else np.nan,
                     "least relative excess": float(g["relative"][~g["best"]].min()) if (~g["best"]).any() else np.nan})
    out = pd.DataFrame(rows)
    out.attrs["two_rate_rows"] = int(len(few))
    out.attrs["at_lower_edge"] = [f"({int(c)}, {int(l)})" for c, l in zip(at_edge["c"], at_edge["l"])] if len(at_edge) else []
    return out


def lr_evidence_text(ev: pd.DataFrame) -> str:
    """One line: whether the rates of :data:`WIDE_LRS` won every architecture trained at all four."""
    n = int(ev["architectures"].max()) if len(ev) else 0
    if n == 0:
        return "no architecture trained at all four learning rates yet"
    kept = ev["lr"].isin([f"{v:.0e}" for v in WIDE_LRS])
    won = int(ev.loc[kept, "best in"].sum())
    left = ev.loc[~kept, "least excess"].min()
    rel = ev.loc[~kept, "least relative excess"].min()
    line = (f"{won} of {n} architectures trained at all four learning rates did best at "
            f"{' or '.join(ev.loc[kept, 'lr'])}; the other rates stayed at least {left:.4f} above the best "
            f"(band {BAND}), at least {rel:.0%} of it")
    few, edge = ev.attrs.get("two_rate_rows", 0), ev.attrs.get("at_lower_edge", [])
    if few:
        line += (f". Of the {few} rows trained at {' and '.join(f'{v:.0e}' for v in WIDE_LRS)} only, "
                 + (f"{len(edge)} did best at {min(WIDE_LRS):.0e}, the lower edge of their sweep ({', '.join(edge)}: "
                    "an untried 1e-4 might have done better there)" if edge else
                    f"none did best at {min(WIDE_LRS):.0e}, the lower edge of their sweep"))
    return line


def paper_spread() -> pd.DataFrame:
    """Table 5 rows that share one compression ratio, with the spread of the paper's distortions:
    how far apart the paper's own points lie at equal storage (the scale of the verdict band)."""
    df = pd.DataFrame([dict(c=c, l=l, compression=comp, distortion=d) for (c, l), (comp, d) in paper.TABLE5.items()])
    out = []
    for comp, g in df.groupby("compression"):
        if len(g) > 1:
            out.append({"compression": comp, "rows (c, l)": ", ".join(f"({c}, {l})" for c, l in zip(g.c, g.l)),
                        "paper distortions": ", ".join(f"{d:.5f}" for d in g.distortion),
                        "spread": round(g.distortion.max() - g.distortion.min(), 5)})
    return pd.DataFrame(out).sort_values("compression", ascending=False).reset_index(drop=True)


def compression_check() -> pd.DataFrame:
    """All 27 + 6 compression ratios from ``recollect.accounting`` against the paper's printed ones
    (Table 5: ``6272 / (c ceil(log2 l))`` to 3 decimals; Table 6: ``6272 / (32 * 4h)``, 8 decimals)."""
    rows = []
    for (c, l), (comp, _) in paper.TABLE5.items():
        ours = accounting.compression_ratio(IMAGE_BITS, accounting.sbe_bits(c, l))
        rows.append(dict(table="Table 5", row=f"c={c}, l={l}", paper=comp, ours=round(ours, 3),
                         equal=math.isclose(round(ours, 3), comp, abs_tol=1e-9)))
    for h, (comp, _) in paper.TABLE6.items():
        ours = accounting.compression_ratio(IMAGE_BITS, accounting.continuous_bits(_LATENT * h))
        rows.append(dict(table="Table 6", row=f"h={h}", paper=comp, ours=round(ours, 8),
                         equal=math.isclose(round(ours, 8), comp, abs_tol=1e-9)))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# JPEG and the baselines beyond the paper
# ------------------------------------------------------------------------------------------------
def _run_jpeg(job) -> dict:
    """Figure 2's JPEG points: Pillow at each quality on the first ``images`` MNIST training images.

    Bits per image = 8 x the mean entropy-coded payload (header and end marker subtracted, appendix
    A.1); compression = 6272 / bits (the ratio of the mean sizes); distortion = appendix A.1 metric.
    """
    cfg = job.cfg
    x = _train_images(cfg.images)
    rows = []
    for q in cfg.qualities:
        tick("jpeg")
        res = codecs.jpeg_roundtrip(x, q)
        bits = res.bits_per_image
        rows.append(dict(quality=q, images=len(x), file_bytes=float(res.total_bytes.double().mean()),
                         header_bytes=float(res.header_bytes.double().mean()),
                         payload_bytes=float(res.payload_bytes.double().mean()), bits=bits,
                         compression=accounting.compression_ratio(IMAGE_BITS, bits),
                         compression_with_header=IMAGE_BITS / (8 * float(res.total_bytes.double().mean())),
                         distortion=codecs.mean_abs_error(res.decoded, x)))
    return {"table": pd.DataFrame(rows)}


def _run_baselines(job) -> dict:
    """Beyond the paper: classical codecs fitted and measured on the autoencoders' training images.

    * PCA, ``k`` components, coefficients at 8 bits (uniform quantizer over each coefficient's
      training range) or 32 bits (float32): ``8k`` / ``32k`` bits;
    * k-means codebook of ``K = 2**b`` centroids: ``b`` bits, for every ``b`` with ``K < N``;
    * downsampling to ``s x s`` at 8 bits or 1 bit per pixel: ``8 s**2`` / ``s**2`` bits.

    One row per setting: method, setting, bits, compression, distortion, param_bits (the codec's
    one-off parameters at 32 bits per number, not counted per image).
    """
    cfg = job.cfg
    grid = cfg.grid()
    x = _train_images(cfg.n_train).to(job.device)
    rows = []

    def add(method, setting, codec):
        ev = codecs.evaluate_codec(codec, x)
        rows.append(dict(method=method, setting=setting, **ev, param_bits=codec.param_bits))

    basis = codecs.PCACodec.basis(x)
    for bits, ks in sorted(grid["pca"].items()):
        for k in ks:
            add(f"PCA, {bits}-bit coefficients", f"k={k}", codecs.PCACodec(k, bits).fit(x, basis))
    gen = generator(cfg.seed)
    b = 1
    while 2 ** b < len(x):
        codec = codecs.KMeansCodec(2 ** b, iters=cfg.kmeans_iters).fit(x, gen)
        add("k-means codebook", f"K=2^{b}", codec)
        b += 1
    for bits, sides in sorted(grid["downsample"].items(), reverse=True):
        for s_ in sides:
            add(f"downsample, {bits}-bit pixels", f"{s_}x{s_}", codecs.DownsampleCodec(s_, bits).fit(x))
    return {"table": pd.DataFrame(rows)}


def _baseline_loops(cfg: BaselineConfig) -> list:
    """The k-means iterations (``kmeans_iters`` for each codebook ``K = 2**b < N``; an upper bound, a
    fit stops when no assignment changes) and the codecs' evaluations. The probe's counted k-means
    step assigns 1,024 images to a codebook of 2 (:meth:`BaselineConfig.probe`, its first codebook);
    an iteration's arithmetic grows with images x codebook (the distances, ``2 N K D`` FLOPs), so the
    real loop's ``work`` is ``N x mean K`` over that. A codec's evaluation grows with the images."""
    bits = range(1, max(1, (cfg.n_train - 1).bit_length()))  # every b with 2**b < n_train
    probe = BaselineConfig().probe()
    mean_k = sum(2 ** b for b in bits) / max(1, len(bits))
    codecs_ = sum(len(v) for g in cfg.grid().values() for v in g.values())
    return [Loop("kmeans", len(bits) * cfg.kmeans_iters, work=cfg.n_train * mean_k / (probe.n_train * 2)),
            Loop("codecs", codecs_ + len(bits), work=cfg.n_train / probe.n_train)]


def jpeg(ctx) -> pd.DataFrame | Missing:
    """The JPEG points (one row per quality)."""
    got, missing = collect(ctx, [f"{CHAPTER}/jpeg"])
    return got[f"{CHAPTER}/jpeg"]["table"] if got else Missing(missing)


def baselines(ctx) -> pd.DataFrame | Missing:
    """The classical codecs (one row per setting; see the ``baselines`` item)."""
    got, missing = collect(ctx, [f"{CHAPTER}/baselines"])
    return got[f"{CHAPTER}/baselines"]["table"] if got else Missing(missing)


_register_all()


@needs_results
def matched_bits(t5: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Each Table 5 row (best lr) beside every baseline at matched bits per image: for each baseline
    family, the setting with the most bits not above the VAE's ``S_sbe`` (eq 1). k-means gets
    exactly ``S_sbe`` bits or nothing (``K = 2**S_sbe`` must stay below the number of images)."""
    best = best_rows(t5).sort_values("bits")
    out = []
    for r in best.itertuples():
        rec = {"c": r.c, "l": r.l, "bits": r.bits, "compression": round(r.compression, 1),
               "categorical VAE": r.distortion}
        for method, grp in base.groupby("method", sort=False):
            if method.startswith("k-means"):
                hit = grp[grp["bits"] == r.bits]
            else:
                hit = grp[grp["bits"] <= r.bits]
                hit = hit[hit["bits"] == hit["bits"].max()] if len(hit) else hit
            rec[method] = float(hit["distortion"].min()) if len(hit) else np.nan
        out.append(rec)
    return pd.DataFrame(out)


#: the columns of :func:`matched_bits` that are not a codec's distortion
_MATCHED_KEYS = ("c", "l", "bits", "compression", "categorical VAE")


@needs_results
def matched_bits_summary(mb: pd.DataFrame) -> pd.DataFrame:
    """:func:`matched_bits` read per baseline: in how many Table 5 rows it has a setting at matched bits
    (``rows compared``), in how many the VAE's distortion is lower and in which the baseline's is,
    and the median ratio of the baseline's distortion to the VAE's over the compared rows (above 1:
    the VAE reconstructs better at the same bits per image)."""
    out = []
    for method in [m for m in mb.columns if m not in _MATCHED_KEYS]:
        sel = mb[mb[method].notna()]
        lower = sel[sel[method] < sel["categorical VAE"]]
        out.append({"baseline": method, "rows compared": len(sel),
                    "VAE lower": int((sel["categorical VAE"] < sel[method]).sum()),
                    "baseline lower": len(lower),
                    "baseline lower at (c, l)": ", ".join(f"({int(r.c)}, {int(r.l)})" for r in lower.itertuples()) or "-",
                    "median ratio baseline / VAE": float((sel[method] / sel["categorical VAE"]).median())
                    if len(sel) else np.nan})
    return pd.DataFrame(out)


@needs_results
def kmeans_table(base: pd.DataFrame) -> pd.DataFrame:
    """The k-means rows of :func:`baselines`, with the size of each codebook."""
    return base[base["method"].str.startswith("k-means")].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# eqs 3 and 4
# ------------------------------------------------------------------------------------------------


def vae_param_bits(c: int, l: int) -> int:
    """Bits of the parameters (32 each) of a real ``CategoricalVAE(c, l)`` for 28x28 images (eq 4)."""
    return _vae_param_bits(int(c), int(l), IMAGE_SHAPE)


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple, np.ndarray, range)) else [v]


def budget_search(fractions=(0.10, 0.02, 0.01), rhos=(1.0, 0.5, 0.2, 0.1), n_examples=50000) -> pd.DataFrame:
    """Eq 3 and eq 4 for a storage budget of ``fraction`` x the raw image (6272 bits) per incoming
    example, i.e. ``gamma / N = fraction * 6272``, for each ``rho`` and ``N`` given.

    Eq 3 (``accounting.search_incremental``): the (c, l) of largest capacity with
    ``rho * S_sbe <= gamma / N``. Eq 4 (``accounting.search_total``): the same with the autoencoder's
    parameters counted, ``N rho S_sbe + |theta|(c, l) <= gamma`` (``|theta|`` of a real
    ``CategoricalVAE(c, l)``, :func:`vae_param_bits`). Search grid: l in 2..64, c in 1..4096.
    """
    rows = []
    for frac in _as_list(fractions):
        rate = float(frac) * IMAGE_BITS
        for n in _as_list(n_examples):
            n = int(n)
            for rho in _as_list(rhos):
                rho = float(rho)
                c3, l3, cap3 = accounting.search_incremental(rate, rho)
                rec = {"budget (x image)": frac, "gamma/N bits": rate, "N": n, "rho": rho,
                       "gamma/(N rho)": rate / rho,
                       "eq 3 (c, l)": f"({c3}, {l3})", "eq 3 C_ve": cap3,
                       "eq 3 bits": accounting.sbe_bits(c3, l3)}
                try:
                    c4, l4, cap4 = accounting.search_total(rate * n, n, rho, vae_param_bits)
                    pb = vae_param_bits(c4, l4)
                    rec.update({"eq 4 (c, l)": f"({c4}, {l4})", "eq 4 C_ve": cap4,
                                "eq 4 bits": accounting.sbe_bits(c4, l4),
                                "eq 4 params": pb // 32, "params share of gamma": round(pb / (rate * n), 3)})
                except ValueError:
                    rec.update({"eq 4 (c, l)": "nothing fits", "eq 4 C_ve": np.nan, "eq 4 bits": np.nan,
                                "eq 4 params": np.nan, "params share of gamma": np.nan})
                rows.append(rec)
    return pd.DataFrame(rows)
