"""Chapter "distortion versus compression": paper section 3, Figure 2, Tables 5 and 6, eqs 1-4.

Experiments (each returns a tidy pandas DataFrame, cached by its config):

* :func:`run_table5` -- the 27 categorical autoencoders (c, l) of Table 5 trained on the MNIST
  training images, each at the four learning rates of appendix A.1 *as one fused model*
  (``groups=4``, ``lr=tensor([1e-2, 1e-3, 1e-4, 1e-5])``); one row per (c, l, lr), ``best`` marks the
  learning rate with the lowest training distortion. Per-epoch curves: :func:`training_curves`.
* :func:`run_table6` -- the same for the 6 continuous autoencoders (h) of Table 6.
* :func:`run_loss_choice` -- the loss the paper does not name: reconstruction (BCE) alone against
  BCE + the categorical VAE's KL term, for a few (c, l).
* :func:`run_jpeg` -- Figure 2's JPEG points (Pillow, qualities 1-100, header subtracted).
* :func:`run_baselines` -- beyond the paper: PCA, a k-means codebook and plain downsampling.
* :func:`budget_search` -- eqs 3 and 4 (accounting only, no training).

Every architecture is checkpointed after each epoch (``ResultCache.put_checkpoint``), so a paper
run stopped after ten minutes continues where it stopped when the command is given again; on a
GPU several architectures train at once in separate processes (``workers``).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
import pandas as pd
import torch

from .. import accounting, baselines, data, paper
from ..cache import ResultCache, config_key
from ..grouped import GroupedAdam
from ..models import CategoricalVAE, ContinuousAE
from ..models.vae import conv_geometry
from ..models.vae import vae_param_bits as _vae_param_bits
from ..train.autoencoder import distortion as ae_distortion
from ..train.autoencoder import train_autoencoder
from ..utils import generator, seed_everything

__all__ = [
    "BAND", "IMAGE_SHAPE", "IMAGE_BITS", "SMOKE_ROWS5", "SMOKE_ROWS6", "config", "arch_config",
    "train_architecture", "run_table5", "run_table6", "run_loss_choice", "run_jpeg", "run_baselines",
    "training_curves", "paper_spread", "table5_rows", "table6_rows", "lr_table", "compression_check", "matched_bits",
    "budget_search", "vae_param_bits", "claims", "training_seconds",
    "figure2", "figure_baselines", "figure_curves", "figure_loss_choice", "figure_budget",
]

#: Tolerance band of the verdicts on distortion (absolute, mean |error| with pixels / 255); the
#: chapter justifies it: the paper's own points at one compression ratio spread by up to 0.009.
BAND = 0.01
IMAGE_SHAPE = (1, 28, 28)
IMAGE_BITS = accounting.image_bits(IMAGE_SHAPE)  # 6,272 (section 3)
#: smoke profile: the cheapest rows (smallest c*l, hence fewest filters) and the smallest h
SMOKE_ROWS5 = ((6, 2), (20, 2), (8, 6))
SMOKE_ROWS6 = (1, 2, 3)
_LATENT = conv_geometry(IMAGE_SHAPE[1])[0][2] ** 2  # 2x2 map: a latent of 4 values per channel


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def config(ctx) -> dict:
    """Every setting of the chapter, from the profile.

    ``paper``: all 27 + 6 rows, the 50,000 MNIST training images, 15 epochs, batch 128, Adam at the
    four learning rates of appendix A.1, reconstruction loss (BCE) only; JPEG on the first 10,000
    training images. ``smoke``: 3 + 3 of the smallest rows, 1,500 images, 2 epochs; JPEG on 500.
    """
    smoke = ctx.smoke
    n_train = 1500 if smoke else 50000
    rows5 = [list(r) for r in (SMOKE_ROWS5 if smoke else paper.TABLE5)]
    train = dict(seed=int(ctx.seeds[0]), n_train=n_train, epochs=2 if smoke else 15, batch_size=128,
                 lrs=[float(v) for v in paper.LR_SWEEP_FIG2], kl_weight=0.0, tau=1.0,
                 curve_images=250 if smoke else 10000, eval_batch=1000, optimizer="adam", loss="bce")
    workers = 1 if smoke or ctx.device.type != "cuda" else 4
    return dict(
        train=train,
        table5=rows5,
        table6=list(SMOKE_ROWS6 if smoke else paper.TABLE6),
        loss_choice=dict(rows=[[6, 2]] if smoke else [[38, 2], [48, 10], [168, 2]], kl_weight=1.0),
        jpeg=dict(images=500 if smoke else 10000, qualities=[1, 25, 50, 75, 100]),
        baselines=dict(seed=int(ctx.seeds[0]), n_train=n_train, kmeans_iters=10 if smoke else 30,
                       **_baseline_grid([accounting.sbe_bits(c, l) for c, l in rows5])),
        workers=workers,
    )


def _baseline_grid(row_bits: list) -> dict:
    """Settings of the baselines: a sweep over Figure 2's range of bits per image, plus the
    settings that match each Table 5 row's bits (:func:`matched_bits`)."""
    def grid(base, need, top):
        return sorted({v for v in list(base) + [n for n in need if n >= 1] if v <= top})
    return dict(
        pca={8: grid([1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 98], [b // 8 for b in row_bits], 98),
             32: grid([1, 2, 3, 4, 6, 8, 12, 16, 24], [b // 32 for b in row_bits], 24)},
        downsample={8: grid(range(1, 15), [math.isqrt(b // 8) for b in row_bits], 14),
                    1: grid([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28], [math.isqrt(b) for b in row_bits], 28)},
    )


def arch_config(train: dict, kind: str, size, kl_weight: float | None = None) -> dict:
    """The cache key of one architecture trained at all learning rates: ``kind`` is
    ``"categorical"`` (size = (c, l)) or ``"continuous"`` (size = h)."""
    if kind not in ("categorical", "continuous"):
        raise ValueError(f"kind must be 'categorical' or 'continuous', got {kind!r}")
    size = [int(s) for s in size] if kind == "categorical" else int(size)
    out = dict(train, kind=kind, size=size)
    if kl_weight is not None:
        out["kl_weight"] = float(kl_weight)
    if kind == "continuous":
        out.pop("tau", None)
        if out["kl_weight"]:
            raise ValueError("the continuous autoencoder has no KL term; use kl_weight=0")
    return out


def _make_model(acfg: dict, groups: int):
    if acfg["kind"] == "categorical":
        c, l = acfg["size"]
        return CategoricalVAE(c, l, IMAGE_SHAPE, groups=groups, tau=acfg["tau"])
    return ContinuousAE(acfg["size"], IMAGE_SHAPE, groups=groups)


def _label(acfg: dict) -> str:
    s = acfg["size"]
    return f"(c, l) = ({s[0]}, {s[1]})" if acfg["kind"] == "categorical" else f"h = {s}"


def _cost(acfg: dict) -> int:
    """Relative training cost (filters squared): big architectures are started first."""
    s = acfg["size"]
    f = math.ceil(s[0] * s[1] / _LATENT) if acfg["kind"] == "categorical" else s
    return f * f


# ------------------------------------------------------------------------------------------------
# training one architecture at all learning rates (one fused model), resumable
# ------------------------------------------------------------------------------------------------
def _train_images(n: int) -> torch.Tensor:
    return data.mnist("train").x[:n]


def train_architecture(acfg: dict, device, cache: ResultCache, progress: bool = False) -> dict:
    """Train one architecture at every learning rate of ``acfg["lrs"]`` as one grouped model.

    Appendix A.1: Adam, learning rates 1e-2 ... 1e-5, the best training distortion is reported. The
    model is checkpointed after every epoch; a call after an interruption resumes from the last
    checkpoint. Returns ``{distortion: [G], loss: [epochs][G], curve: [epochs][G], params, seconds}``
    where ``distortion`` is one stochastic pass over all training images, ``loss`` the mean training
    loss per epoch and ``curve`` the distortion on the first ``curve_images`` images after each epoch.
    """
    key = config_key("distortion-ae", acfg)
    hit = cache.get(key)
    if hit is not None:
        return hit
    dev = torch.device(device)
    seed = acfg["seed"]
    x = _train_images(acfg["n_train"]).to(dev)
    seed_everything(seed)
    groups = len(acfg["lrs"])
    model = _make_model(acfg, groups).to(dev)
    lrs = torch.tensor(acfg["lrs"], dtype=torch.float32, device=dev)
    opt = GroupedAdam(model.parameters(), lr=lrs)
    shuffle = generator(seed)  # CPU generator: shuffles, and the Gumbel noise when training on the CPU
    state = dict(epoch=0, loss=[], curve=[], seconds=0.0)
    ck = cache.get_checkpoint(key)
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        for group in opt.param_groups:  # keep the learning rates on the device (the checkpoint has them on the CPU)
            group["lr"] = lrs
        shuffle.set_state(ck["shuffle"])
        if dev.type == "cuda" and ck.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ck["cuda_rng"], dev)
        state = ck["state"]
    sub = x[: acfg["curve_images"]]
    clock = [time.perf_counter()]

    def on_epoch_end(epoch, model, opt, losses):
        state["loss"].append([float(v) for v in losses[-1]])
        # the same noise every epoch (a fresh generator), so the curve moves only with the weights
        d = ae_distortion(model, sub, acfg["eval_batch"], generator(seed + 1, dev))
        state["curve"].append([float(v) for v in d])
        state["epoch"] = epoch + 1
        now = time.perf_counter()
        state["seconds"] += now - clock[0]
        clock[0] = now
        cache.put_checkpoint(key, dict(model=model.state_dict(), opt=opt.state_dict(), shuffle=shuffle.get_state(),
                                       cuda_rng=torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                                       state=state))

    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda" or prev
    try:
        train_autoencoder(model, x, acfg["epochs"], acfg["batch_size"], lrs, shuffle,
                          kl_weight=acfg["kl_weight"], optimizer=opt, start_epoch=state["epoch"],
                          on_epoch_end=on_epoch_end, progress=progress, desc=_label(acfg))
    finally:
        torch.backends.cudnn.benchmark = prev
    t0 = time.perf_counter()
    final = ae_distortion(model, x, acfg["eval_batch"], generator(seed + 2, dev))
    result = dict(acfg, distortion=[float(v) for v in final], loss=state["loss"], curve=state["curve"],
                  params=accounting.param_count(model, groups=groups),
                  seconds=state["seconds"] + time.perf_counter() - t0)
    cache.put(key, result)
    return result


def _worker(acfg: dict, device: str, cache_root: str, threads: int) -> str:
    """Entry point of a training process (spawned): the result goes to the shared cache."""
    torch.set_num_threads(threads)
    train_architecture(acfg, device, ResultCache(cache_root), progress=False)
    return _label(acfg)


def _train_all(ctx, acfgs: list, workers: int) -> list:
    """Train every architecture of ``acfgs`` (cache hits are free); with ``workers > 1`` several
    architectures train at once in spawned processes that share the results cache."""
    todo = [a for a in acfgs if ctx.cache.get(config_key("distortion-ae", a)) is None]
    if workers > 1 and len(todo) > 1:
        from tqdm import tqdm

        todo.sort(key=_cost, reverse=True)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = [pool.submit(_worker, a, str(ctx.device), str(ctx.cache.root), 2) for a in todo]
            for f in tqdm(as_completed(futs), total=len(futs), desc="architectures", disable=ctx.smoke):
                f.result()
    return [train_architecture(a, ctx.device, ctx.cache, progress=not ctx.smoke) for a in acfgs]


def _results_frame(results: list, labels: list) -> pd.DataFrame:
    rows, curves = [], []
    for lab, r in zip(labels, results):
        for g, lr in enumerate(r["lrs"]):
            rows.append(dict(lab, lr=lr, distortion=r["distortion"][g], params=r["params"], seconds=r["seconds"]))
            for e, (lo, cu) in enumerate(zip(r["loss"], r["curve"])):
                curves.append(dict(lab, lr=lr, epoch=e + 1, train_loss=lo[g], curve_distortion=cu[g]))
    df = pd.DataFrame(rows)
    keys = [k for k in labels[0]]
    best = df.groupby(keys, sort=False)["distortion"].transform("min")
    df["best"] = df["distortion"] == best
    df.attrs["curves"] = pd.DataFrame(curves)
    return df


def training_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch curves of a :func:`run_table5` / :func:`run_table6` / :func:`run_loss_choice` result:
    one row per (architecture, lr, epoch) with the mean ``train_loss`` and ``curve_distortion``
    (distortion on the first ``curve_images`` training images after that epoch)."""
    return df.attrs["curves"]


# ------------------------------------------------------------------------------------------------
# Tables 5 and 6, and the loss choice
# ------------------------------------------------------------------------------------------------
def _table5_labels(rows) -> list:
    out = []
    for c, l in rows:
        bits = accounting.sbe_bits(c, l)
        out.append(dict(c=c, l=l, bits=bits, capacity=accounting.capacity_bits(c, l),
                        compression=accounting.compression_ratio(IMAGE_BITS, bits)))
    return out


def run_table5(ctx) -> pd.DataFrame:
    """Table 5 / Figure 2 (categorical): one row per (c, l, lr) with the training distortion.

    Columns: c, l, bits (eq 1), capacity (eq 2), compression (6272 / bits), lr, distortion, params
    (|theta| of one model), seconds (training time of the fused model), best.
    """
    cfg = config(ctx)
    key_cfg = dict(train=cfg["train"], rows=cfg["table5"])

    def fn():
        acfgs = [arch_config(cfg["train"], "categorical", r) for r in cfg["table5"]]
        results = _train_all(ctx, acfgs, cfg["workers"])
        return _results_frame(results, _table5_labels(cfg["table5"]))

    return ctx.cache.memo("distortion-table5", key_cfg, fn)


def run_table6(ctx) -> pd.DataFrame:
    """Table 6 / Figure 2 (continuous): one row per (h, lr); the latent holds 4h floats of 32 bits."""
    cfg = config(ctx)
    key_cfg = dict(train=cfg["train"], rows=cfg["table6"])

    def fn():
        acfgs = [arch_config(cfg["train"], "continuous", h) for h in cfg["table6"]]
        results = _train_all(ctx, acfgs, cfg["workers"])
        labels = []
        for h in cfg["table6"]:
            bits = accounting.continuous_bits(_LATENT * h)
            labels.append(dict(h=h, floats=_LATENT * h, bits=bits,
                               compression=accounting.compression_ratio(IMAGE_BITS, bits)))
        return _results_frame(results, labels)

    return ctx.cache.memo("distortion-table6", key_cfg, fn)


def run_loss_choice(ctx) -> pd.DataFrame:
    """The paper names no loss: BCE alone against BCE + KL to the uniform prior (weight
    ``kl_weight``, Jang et al. 2017), same (c, l), learning rates and epochs as Table 5.

    One row per (c, l, loss, lr). The BCE runs are the Table 5 runs (shared cache entries).
    """
    cfg = config(ctx)
    lc = cfg["loss_choice"]
    key_cfg = dict(train=cfg["train"], **lc)

    def fn():
        acfgs, labels = [], []
        for c, l in lc["rows"]:
            for name, w in (("BCE", 0.0), (f"BCE + {lc['kl_weight']:g} KL", lc["kl_weight"])):
                acfgs.append(arch_config(cfg["train"], "categorical", (c, l), kl_weight=w))
                labels.append(dict(c=c, l=l, loss=name))
        results = _train_all(ctx, acfgs, cfg["workers"])
        return _results_frame(results, labels)

    return ctx.cache.memo("distortion-loss-choice", key_cfg, fn)


def _best(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["best"]].drop_duplicates([k for k in ("c", "l", "h", "loss") if k in df.columns])


def table5_rows(t5: pd.DataFrame) -> list:
    """Rows for ``report.compare``: Table 5 with the paper's distortion beside ours (best lr)."""
    rows = []
    for r in _best(t5).itertuples():
        rows.append({"c": r.c, "l": r.l, "bits": r.bits, "compression": round(r.compression, 3),
                     "best lr": f"{r.lr:.0e}", "paper": paper.TABLE5[(r.c, r.l)][1],
                     "ours": r.distortion, "runs": 1})
    return rows


def table6_rows(t6: pd.DataFrame) -> list:
    """Rows for ``report.compare``: Table 6 with the paper's distortion beside ours (best lr)."""
    rows = []
    for r in _best(t6).itertuples():
        rows.append({"h": r.h, "floats": r.floats, "compression": round(r.compression, 8),
                     "best lr": f"{r.lr:.0e}", "paper": paper.TABLE6[r.h][1], "ours": r.distortion, "runs": 1})
    return rows


def lr_table(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Training distortion at each learning rate (columns), one row per architecture."""
    keys = [k for k in ("c", "l", "h", "loss") if k in df.columns]
    out = df.pivot_table(index=keys, columns="lr", values="distortion", sort=False)
    out.columns = [f"lr {v:.0e}" for v in out.columns]
    return out.round(digits).reset_index()


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
def run_jpeg(ctx) -> pd.DataFrame:
    """Figure 2's JPEG points: Pillow at each quality on the first ``images`` MNIST training images.

    Bits per image = 8 x the mean entropy-coded payload (header and end marker subtracted, appendix
    A.1); compression = 6272 / bits (the ratio of the mean sizes); distortion = appendix A.1 metric.
    """
    cfg = config(ctx)["jpeg"]

    def fn():
        x = _train_images(cfg["images"])
        rows = []
        for q in cfg["qualities"]:
            res = baselines.jpeg_roundtrip(x, q)
            bits = res.bits_per_image
            rows.append(dict(quality=q, images=len(x), file_bytes=float(res.total_bytes.double().mean()),
                             header_bytes=float(res.header_bytes.double().mean()),
                             payload_bytes=float(res.payload_bytes.double().mean()), bits=bits,
                             compression=accounting.compression_ratio(IMAGE_BITS, bits),
                             compression_with_header=IMAGE_BITS / (8 * float(res.total_bytes.double().mean())),
                             distortion=baselines.mean_abs_error(res.decoded, x)))
        return pd.DataFrame(rows)

    return ctx.cache.memo("distortion-jpeg", cfg, fn)


def run_baselines(ctx) -> pd.DataFrame:
    """Beyond the paper: classical codecs fitted and measured on the autoencoders' training images.

    * PCA, ``k`` components, coefficients at 8 bits (uniform quantizer over each coefficient's
      training range) or 32 bits (float32): ``8k`` / ``32k`` bits;
    * k-means codebook of ``K = 2**b`` centroids: ``b`` bits, for every ``b`` with ``K < N``;
    * downsampling to ``s x s`` at 8 bits or 1 bit per pixel: ``8 s**2`` / ``s**2`` bits.

    One row per setting: method, setting, bits, compression, distortion, param_bits (the codec's
    one-off parameters at 32 bits per number, not counted per image).
    """
    cfg = config(ctx)["baselines"]

    def fn():
        x = _train_images(cfg["n_train"]).to(ctx.device)
        rows = []

        def add(method, setting, codec):
            ev = baselines.evaluate_codec(codec, x)
            rows.append(dict(method=method, setting=setting, **ev, param_bits=codec.param_bits))

        basis = baselines.PCACodec.basis(x)
        for bits, ks in sorted(cfg["pca"].items()):
            for k in ks:
                add(f"PCA, {bits}-bit coefficients", f"k={k}", baselines.PCACodec(k, bits).fit(x, basis))
        gen = generator(cfg["seed"])
        b = 1
        while 2 ** b < len(x):
            codec = baselines.KMeansCodec(2 ** b, iters=cfg["kmeans_iters"]).fit(x, gen)
            add("k-means codebook", f"K=2^{b}", codec)
            b += 1
        for bits, sides in sorted(cfg["downsample"].items(), reverse=True):
            for s in sides:
                add(f"downsample, {bits}-bit pixels", f"{s}x{s}", baselines.DownsampleCodec(s, bits).fit(x))
        return pd.DataFrame(rows)

    return ctx.cache.memo("distortion-baselines", cfg, fn)


def matched_bits(t5: pd.DataFrame, base: pd.DataFrame) -> pd.DataFrame:
    """Each Table 5 row (best lr) beside every baseline at matched bits per image: for each baseline
    family, the setting with the most bits not above the VAE's ``S_sbe`` (eq 1). k-means gets
    exactly ``S_sbe`` bits or nothing (``K = 2**S_sbe`` must stay below the number of images)."""
    best = _best(t5).sort_values("bits")
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
                rec = {"budget (x image)": frac, "gamma/N bits": round(rate, 2), "N": n, "rho": rho,
                       "gamma/(N rho)": round(rate / rho, 1),
                       "eq 3 (c, l)": f"({c3}, {l3})", "eq 3 C_ve": round(cap3, 1),
                       "eq 3 bits": accounting.sbe_bits(c3, l3)}
                try:
                    c4, l4, cap4 = accounting.search_total(rate * n, n, rho, vae_param_bits)
                    pb = vae_param_bits(c4, l4)
                    rec.update({"eq 4 (c, l)": f"({c4}, {l4})", "eq 4 C_ve": round(cap4, 1),
                                "eq 4 bits": accounting.sbe_bits(c4, l4),
                                "eq 4 params": pb // 32, "params share of gamma": round(pb / (rate * n), 3)})
                except ValueError:
                    rec.update({"eq 4 (c, l)": "nothing fits", "eq 4 C_ve": np.nan, "eq 4 bits": np.nan,
                                "eq 4 params": np.nan, "params share of gamma": np.nan})
                rows.append(rec)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# claims of section 3
# ------------------------------------------------------------------------------------------------
def _spearman(a, b) -> float:
    a, b = pd.Series(list(a), dtype=float), pd.Series(list(b), dtype=float)
    return float(a.rank().corr(b.rank()))


def claims(t5: pd.DataFrame, t6: pd.DataFrame, by_rho: pd.DataFrame, by_n: pd.DataFrame) -> list:
    """``[(claim, holds, evidence)]`` for ``report.claims_table``; evaluated on our numbers."""
    out = []
    b5, b6 = _best(t5), _best(t6)
    # 1. categorical vs continuous at equal distortion
    factors = []
    for r in b6.itertuples():
        ok = b5[b5["distortion"] <= r.distortion]
        if len(ok):
            factors.append((r.h, ok["compression"].max() / r.compression))
    holds = bool(factors) and all(f > 1 for _, f in factors)
    ev = ("; ".join(f"h={h}: x{f:.1f}" for h, f in factors) if factors else
          "no categorical model reaches the distortion of any continuous one")
    out.append(("Categorical autoencoders compress more than continuous ones at the same average distortion "
                "(Figure 2)", holds,
                "best categorical compression with distortion <= the continuous model's, over its compression: " + ev))
    # 2. distortion falls with the capacity C_ve (eq 2)
    rs = _spearman(b5["capacity"], b5["distortion"])
    rp = _spearman([accounting.capacity_bits(c, l) for c, l in zip(b5["c"], b5["l"])],
                   [paper.TABLE5[(c, l)][1] for c, l in zip(b5["c"], b5["l"])])
    out.append(("The ability to reconstruct is strongly related to the bottleneck capacity C_ve (eq 2)",
                bool(rs <= -0.8),
                f"Spearman rank correlation of C_ve and distortion over {len(b5)} rows: {rs:.2f} "
                f"(paper's numbers, same rows: {rp:.2f}); 'strong' taken as <= -0.8"))
    # 3. eq 3's approximate solution
    ratio = by_rho["eq 3 C_ve"] / by_rho["gamma/(N rho)"]
    out.append(("Eq 3 yields C_ve ~ gamma / (N rho)", bool(((ratio > 0.9) & (ratio <= 1.0 + 1e-9)).all()),
                f"C_ve / (gamma / (N rho)) between {ratio.min():.3f} and {ratio.max():.3f} over {len(ratio)} budgets"))
    # 4. diversity (rho) against capacity
    mono = all((g.sort_values("rho")["eq 3 C_ve"].diff().dropna() <= 0).all()
               for _, g in by_rho.groupby("budget (x image)"))
    out.append(("Storing more examples (larger rho) leaves less capacity per example (eqs 3-4 trade-off)", mono,
                "eq 3 capacity never rises as rho rises, at every budget"))
    # 5. eq 4 is harsher, and the parameters' share falls as N grows
    cap3, cap4 = by_rho["eq 3 C_ve"], by_rho["eq 4 C_ve"].fillna(0)
    harsher = bool((cap4 <= cap3).all() and (cap4 < cap3).any())
    out.append(("Counting the model's parameters (eq 4) is a harsher constraint than eq 3", harsher,
                f"eq 4 capacity / eq 3 capacity between {(cap4 / cap3).min():.2f} and {(cap4 / cap3).max():.2f}"))
    g = by_n.sort_values("N")
    share = g["eq 4 C_ve"].fillna(0) / g["eq 3 C_ve"]
    rising = bool((share.diff().dropna() >= 0).all())
    out.append(("The startup cost of the model is amortised: as the number of examples N grows at a fixed rate "
                "gamma / N, the eq 4 solution approaches eq 3's", rising and share.iloc[-1] > share.iloc[0],
                "eq 4 / eq 3 capacity for N = " + ", ".join(f"{n:,}: {s:.3f}" for n, s in zip(g["N"], share))))
    return out


def training_seconds(*frames) -> float:
    """Total training time recorded in the results (summed over the commands that built the cache)."""
    total = 0.0
    for df in frames:
        keys = [k for k in ("c", "l", "h", "loss") if k in df.columns]
        total += float(df.drop_duplicates(keys)["seconds"].sum())
    return total


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
def _axes(ax=None, figsize=(7, 4.5)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
    return ax.figure, ax


def figure2(t5, t6, jpeg, ax=None):
    """Figure 2 redrawn: distortion (mean L1, pixels / 255) against compression (log scale);
    ours filled, the paper's Tables 5 and 6 hollow."""
    fig, ax = _axes(ax)
    b5, b6 = _best(t5), _best(t6).sort_values("compression")
    p5 = np.array([v for v in paper.TABLE5.values()])
    p6 = np.array([v for v in paper.TABLE6.values()])
    ax.scatter(p5[:, 0], p5[:, 1], facecolors="none", edgecolors="C0", marker="o", label="categorical (paper)")
    ax.scatter(p6[:, 0], p6[:, 1], facecolors="none", edgecolors="C1", marker="s", label="continuous (paper)")
    ax.scatter(b5["compression"], b5["distortion"], color="C0", marker="o", label="categorical (ours)")
    ax.plot(b6["compression"], b6["distortion"], color="C1", marker="s", label="continuous (ours)")
    j = jpeg.sort_values("compression")
    ax.plot(j["compression"], j["distortion"], color="C2", marker="^", label="JPEG (ours)")
    for r in j.itertuples():
        ax.annotate(f"q{r.quality}", (r.compression, r.distortion), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, color="C2")
    ax.set_xscale("log")
    ax.set_xlabel("compression (raw 6,272 bits / stored bits)")
    ax.set_ylabel("distortion (mean |x - x_hat|, pixels / 255)")
    ax.set_title("Figure 2: distortion against compression on MNIST (training set)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def figure_baselines(t5, jpeg, base, ax=None):
    """Beyond the paper: the categorical VAE among PCA, k-means and downsampling on Figure 2's axes."""
    fig, ax = _axes(ax, figsize=(8, 5))
    b5 = _best(t5)
    ax.scatter(b5["compression"], b5["distortion"], color="C0", marker="o", zorder=5, label="categorical VAE (ours)")
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
        ax.annotate("k-means stops here\n(K must stay below N)", (edge, ax.get_ylim()[1]), fontsize=7, color="C4",
                    ha="right", va="top", xytext=(-3, -3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("compression (raw 6,272 bits / stored bits)")
    ax.set_ylabel("distortion (mean |x - x_hat|, pixels / 255)")
    ax.set_title("Where the discrete VAE stands among classical codecs (bits per image)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return fig


def figure_curves(t5, t6):
    """Per-epoch training loss and distortion (first ``curve_images`` images) at each architecture's
    best learning rate: the evidence for the number of epochs."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for df, kind, cmap in ((t5, "categorical", "viridis"), (t6, "continuous", "autumn")):
        cur = training_curves(df)
        best = _best(df)
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


def figure_loss_choice(lc):
    """Distortion after each epoch, BCE alone against BCE + KL, at each loss's best learning rate,
    with the other learning rates faint."""
    import matplotlib.pyplot as plt

    cur = training_curves(lc)
    archs = lc[["c", "l"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.6), squeeze=False)
    best = _best(lc)
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


def figure_budget(by_rho):
    """Eqs 3 and 4: the best capacity C_ve against rho, without and with the model's parameters."""
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
