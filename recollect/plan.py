"""``python -m recollect plan``: every paper-profile item, its state, its estimated GPU time, totals.

Runs on any machine. Each item's estimate comes from measured per-step rates when a GPU preflight
has recorded them (``results/rates.json``), else from counted FLOPs and kernel launches per step on
a CPU probe at the paper's shapes (``results/counts.json``, made by ``plan --count`` and by the CI
dry run), with the constants printed; once both exist, the table shows each counted estimate's
error against the measurement.
"""
from __future__ import annotations

import json
import time

import pandas as pd
import torch

from . import results as R
from .experiments import items as I
from .queue import (CONSTANTS, COUNTS_FILE, RATES_FILE, _load_json, counted_step_seconds, cpu_seconds,
                    estimate_seconds, matmul_flop_rate)
from .train import probe

__all__ = ["plan_table", "print_plan", "dry_run", "CPU_ITEM_MINUTES"]

#: a GPU item that the counting CPU makes in at most this many minutes is listed as makeable on a CPU
CPU_ITEM_MINUTES = 30


def plan_table(chapters=None) -> pd.DataFrame:
    """One row per paper-profile item: chapter, item, stage, gpu, state (with date and device when
    done), estimated minutes and how, and the counted estimate's error against a measured one, and the
    minutes the CPU that counted the items would take (``cpu minutes``: steps x its seconds per step)."""
    store = R.ResultStore()
    rates = _load_json(R.results_dir() / RATES_FILE)
    counts = _load_json(R.results_dir() / COUNTS_FILE)
    rows = []
    for it in I.paper_items().values():
        if chapters and it.chapter not in chapters:
            continue
        state, got = I.item_state(it, store)
        when, took = "", None
        if got is not None:
            when = f"{got.provenance.get('date', '')[:10]} {got.provenance.get('device', '')}"
            if got.provenance.get("gpu") is None:
                took = float(got.provenance.get("seconds", 0.0)) / 60
        est, how = estimate_seconds(it, rates, counts)
        counted, _ = estimate_seconds(it, None, counts)
        cpu = cpu_seconds(it, counts)
        err = ""
        if est is not None and counted is not None and how.startswith("measured"):
            err = f"{(counted - est) / est * 100:+.0f}%"
        rows.append({"chapter": it.chapter, "item": it.name, "stage": it.stage, "priority": it.priority,
                     "gpu": "yes" if it.gpu else "no (CPU)", "state": state, "made": when,
                     "minutes": None if est is None else round(est / 60, 2), "how": how,
                     "counted vs measured": err, "cpu minutes": None if cpu is None else round(cpu / 60, 1),
                     "cpu minutes taken": None if took is None else round(took, 1),
                     "depends": ", ".join(it.depends),
                     "reduction": it.reduction})
    return pd.DataFrame(rows)


def print_plan(chapters=None, all_rows: bool = True) -> pd.DataFrame:
    df = plan_table(chapters)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200,
                           "display.max_colwidth", 60):
        cols = ["chapter", "item", "stage", "gpu", "state", "made", "minutes", "how", "counted vs measured",
                "cpu minutes"]
        print(df[cols].to_string(index=False))
    print()
    gpu = df[df.gpu == "yes"]
    for label, sel in (("first pass", gpu[gpu.stage == "first"]), ("whole paper profile", gpu)):
        known = sel.minutes.notna()
        left = sel[sel.state != "done"]
        print(f"{label}: {len(sel)} GPU items, {sel[known].minutes.sum():.1f} estimated H200-minutes"
              f"{'' if known.all() else f' ({(~known).sum()} not yet estimated)'}; still to make: {len(left)} items, "
              f"{left[left.minutes.notna()].minutes.sum():.1f} minutes")
    first = gpu[gpu.stage == "first"]
    if len(first):
        per = first.groupby("chapter", sort=False).minutes.sum()
        print("first pass per chapter (estimated H200-minutes): " + ", ".join(f"{c} {m:.2f}" for c, m in per.items()))
    auto = [it for it in I.paper_items().values() if (not chapters or it.chapter in chapters)
            and getattr(it.cfg("paper"), "precision", None) == "auto"]
    if auto:
        mins = df[df.chapter.isin({it.chapter for it in auto}) & df.item.isin({it.name for it in auto})].minutes
        print(f"{len(auto)} items ({mins.sum():.1f} of the minutes above) train in bf16 if the check they depend on "
              f"({', '.join(sorted({d for it in auto for d in it.depends}))}) finds it within its band; their "
              "estimates count float32 arithmetic")
    cpu = df[df.gpu != "yes"]
    if len(cpu):
        print(f"CPU items (made on any machine with `python -m recollect run CHAPTER --profile paper`): "
              f"{len(cpu)}, {int((cpu.state == 'done').sum())} done")
    small = gpu[(gpu.state != "done") & gpu["cpu minutes"].notna() & (gpu["cpu minutes"] <= CPU_ITEM_MINUTES)]
    if len(small):
        print(f"GPU items a CPU like the counting one makes in <= {CPU_ITEM_MINUTES} minutes each (estimate: its "
              f"measured seconds per probe step, at least the real step's FLOPs at its matmul rate): {len(small)} not made, {small['cpu minutes'].sum():.0f} CPU-minutes "
              "in all; on a machine without a GPU, cheapest first:")
        for chapter, g in small.sort_values("cpu minutes").groupby("chapter", sort=False):
            print(f"  python -m recollect run {chapter} --profile paper --item {' '.join(g.item)}")
    made = df[(df.gpu == "yes") & df["cpu minutes taken"].notna() & df["cpu minutes"].notna()]
    if len(made):
        ratio = made["cpu minutes taken"] / made["cpu minutes"]
        print("  GPU items made on a CPU so far, minutes taken against this estimate: " + ", ".join(
            f"{c} {r.min():.1f}x" + (f" to {r.max():.1f}x" if len(r) > 1 else "")
            for c, r in ratio.groupby(made.chapter, sort=False))
            + " (the estimate is for the counting CPU's threads, idle; a GEM or iCaRL step is extrapolated from a "
            "probe of three tasks)")
    print("\nestimates: measured per-step rates of a GPU preflight where recorded, else counted per step on a CPU "
          "probe at the paper's shapes:")
    print("  eager step  = max(launches x EAGER_OP_S, FLOPs / FLOP_RATE)   (host-bound)")
    print("  captured step = launches x GRAPH_KERNEL_S + FLOPs / FLOP_RATE (one CUDA graph replay)")
    print("  a loop whose real step does `work` times its probe step's arithmetic (Loop.work) costs at least "
          "work x FLOPs / FLOP_RATE; its cpu minutes at least work x FLOPs / the counting CPU's matmul rate")
    print("  " + ", ".join(f"{k} = {v:g}" for k, v in CONSTANTS.items()) + "  (estimates, from shared/probe-notes.md)")
    return df


def dry_run(keys=None, device: str = "cpu", count: bool = True, log=print) -> list:
    """Every paper-profile item at the paper's shapes for a few steps, on ``device``: a shape or
    memory error shows here, on a CPU, instead of costing GPU minutes. With ``count``, at its probe
    config, and the FLOPs, launches and seconds per step of every loop go to ``results/counts.json``
    (what the plan's counted estimates use); without, at its dry config (one step per loop where the
    config says how, ``Item.cfg("dry")``: CI's check). Returns the failures ``[(item, error)]``."""
    path = R.results_dir() / COUNTS_FILE
    counts = _load_json(path)
    failures = []
    memo: dict = {}
    rate = None
    for key, it in I.paper_items().items():
        if keys and key not in keys and it.chapter not in keys:
            continue
        t0 = time.perf_counter()
        try:
            with probe.Recorder(count=count, count_steps=1, skip=1) as rec:
                I.run_item(it, "probe" if count else "dry", device, R.ResultStore(), _memo=memo)
        except Exception as e:
            failures.append((key, f"{type(e).__name__}: {e}"))
            log(f"dry run {key}: FAILED {type(e).__name__}: {e}")
            continue
        loops = {k: v.to_dict() for k, v in rec.loops.items()}
        msg = ", ".join(f"{k}: {v['steps']} steps" + (f", {v['launches_per_step']:.0f} launches, "
                                                       f"{v['flops_per_step'] / 1e9:.3g} GFLOP per step" if count else "")
                        for k, v in loops.items())
        log(f"dry run {key}: ok in {time.perf_counter() - t0:.1f} s ({msg or 'no loop ticked'})")
        if count:
            rate = rate or matmul_flop_rate()
            counts[key] = {"probe_config": R.config_hash(I._as_dict(it.cfg("probe"))), "loops": loops,
                           "flop_rate": rate, "torch": torch.__version__,
                           "date": time.strftime("%Y-%m-%d", time.gmtime())}
            R.atomic_write(path, (json.dumps(R.encode(dict(sorted(counts.items())), {}), indent=1) + "\n").encode())
    return failures
