"""Side-by-side speed benchmark: plain eager PyTorch against the project's engine, on one device.

    python bench/speed.py                     # full benchmark (meant for one GPU)
    python bench/speed.py --quick             # a few steps of each, to check it runs (CPU)
    python bench/speed.py --out bench/results.md

For each workload of the book it times

* **eager**: one model at a time, plain eager steps in float32 (the library at G = 1, no graph), and
* **engine**: G models of the same architecture fused into one network (``recollect.grouped``), the
  whole training step captured in a CUDA graph (``recollect.train.fast.TrainStep``), in float32
  and in bf16 autocast,

and prints the time one run of the workload takes (per model: fused time / G) and the ratio. Where
the eager version would take too long, it is timed on a prefix and extrapolated, labelled as such.
Random images are used: the timings do not depend on the pixel values. Before timing, it checks on
the same device that the graph and bf16 paths compute the same losses as the eager path within a
stated tolerance.

Workloads: one CIFAR-100 lifelong stream (50,000 32x32x3 examples, GEM's reduced ResNet-18, each
step 1 new example + 10 recollections); one Omniglot lifelong stream (29,214 28x28 examples,
ResNet-18 over 1,623 classes); one epoch of the Figure 2 sweep (33 architectures x 4 learning
rates on 50,000 MNIST-sized images, batch 128); the students of one Table 1 column (LeNet, one
example per update, 100,000 episodes, 5 seeds x 2 learning rates). And the optimizer step alone
(issue 14): ``GroupedAdam``'s one path (rates in a device tensor) against PyTorch's fused Adam kernel
called once per run of equal rates, for a Figure 2 autoencoder, the fused ResNet-18 and the students
(on 5 steps of LeNet students both give the same weights to 1.5e-8, checked on a CPU).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import signal
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recollect import paper  # noqa: E402
from recollect.grouped import (GroupedAdam, GroupedSGD, equal_runs, grouped_cross_entropy, select_group,  # noqa: E402
                               stack_groups)
from recollect.train.capture import CapturedStep  # noqa: E402
from recollect.models import CategoricalVAE, ContinuousAE, LeNet, ResNet18  # noqa: E402
from recollect.train.autoencoder import reconstruction_loss  # noqa: E402
from recollect.train.fast import TrainStep  # noqa: E402
from recollect.utils import device_name, pick_device  # noqa: E402


def _cls_loss(model, x, y):
    return grouped_cross_entropy(model(x), y)


def _ae_loss(model, x):
    return reconstruction_loss(model, x)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, make_batch, n_steps, dev, warmup=5):
    """Seconds per step, after ``warmup`` steps (graph capture happens during warm-up)."""
    batches = [make_batch(i) for i in range(min(n_steps, 16))]
    for i in range(warmup):
        step(*batches[i % len(batches)])
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(n_steps):
        step(*batches[i % len(batches)])
    _sync(dev)
    return (time.perf_counter() - t0) / n_steps


def classifier_workload(make_model, shape, k, batch, groups, dev, steps, graph, amp, lr=0.1):
    torch.manual_seed(0)
    model = make_model(groups).to(dev)
    opt = GroupedSGD(model.parameters(), lr=lr)
    step = TrainStep(model, opt, _cls_loss, cuda_graph=graph, amp_dtype=amp)
    gen = torch.Generator(device=dev).manual_seed(0)

    def make_batch(i):
        x = torch.randint(0, 256, (groups, batch, *shape), dtype=torch.uint8, device=dev, generator=gen)
        return x, torch.randint(0, k, (groups, batch), device=dev, generator=gen)
    return time_steps(step, make_batch, steps, dev)


def autoencoder_workload(make_model, groups, dev, steps, graph, amp, batch=128):
    torch.manual_seed(0)
    model = make_model(groups).to(dev)
    opt = GroupedAdam(model.parameters(), lr=torch.tensor(paper.LR_SWEEP_FIG2[:groups] if groups <= 4 else 1e-3))
    step = TrainStep(model, opt, _ae_loss, cuda_graph=graph, amp_dtype=amp)
    gen = torch.Generator(device=dev).manual_seed(0)

    def make_batch(i):
        return (torch.randint(0, 256, (groups, batch, 1, 28, 28), dtype=torch.uint8, device=dev, generator=gen),)
    return time_steps(step, make_batch, steps, dev)


def adam_workload(make_model, rates, dev, steps, graph, direct):
    """Seconds per optimizer step alone (fixed gradients) on a fused model of ``len(rates)`` groups:
    ``GroupedAdam`` as the library runs it on CUDA (the lerp path: four multi-tensor kernels, the
    rates in a device tensor, so schedules reach a captured graph), or (``direct``) PyTorch's fused
    Adam kernel once per run of consecutive groups with equal rates, on slices of the fused
    parameters, each run's rate a host value (baked into a captured graph: no schedule)."""
    torch.manual_seed(0)
    params = [p for p in make_model(len(rates)).to(dev).parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    if not direct:
        opt = GroupedAdam(params, lr=torch.tensor(rates, dtype=torch.float32))
        opt.cpu_direct = False  # the CUDA arithmetic on any device (the CPU's default is the direct path)
        fn = opt.step
    else:
        ms, vs = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        counts = [torch.zeros((), dtype=torch.float32, device=dev) for _ in params]
        views = [(lr, [p[a:e] for p in params], [p.grad[a:e] for p in params], [m[a:e] for m in ms],
                  [v[a:e] for v in vs]) for a, e, lr in equal_runs(list(rates))]

        @torch.no_grad()
        def fn():
            torch._foreach_add_(counts, 1.0)
            for lr, ps, gs, m, v in views:
                torch._fused_adam_(ps, gs, m, v, [], counts, lr=lr, beta1=0.9, beta2=0.999, weight_decay=0.0,
                                   eps=1e-8, amsgrad=False, maximize=False)
    step = CapturedStep(lambda: fn() and None, cuda_graph=graph, device=dev, name="adam")
    return time_steps(step, lambda i: (), steps, dev)


def check_equivalence(dev, steps=20):
    """Max relative loss difference of graph fp32 and graph bf16 against eager fp32 (same init, data)."""
    torch.manual_seed(0)
    base = ResNet18(5, (3, 32, 32), groups=4).to(dev)
    gen = torch.Generator(device=dev).manual_seed(1)
    data = [(torch.randint(0, 256, (4, 11, 3, 32, 32), dtype=torch.uint8, device=dev, generator=gen),
             torch.randint(0, 5, (4, 11), device=dev, generator=gen)) for _ in range(steps)]
    curves = {}
    for name, graph, amp in (("eager fp32", False, None), ("graph fp32", True, None), ("graph bf16", True, torch.bfloat16)):
        model = stack_groups([select_group(base, g) for g in range(4)])
        step = TrainStep(model, GroupedSGD(model.parameters(), lr=0.05), _cls_loss, cuda_graph=graph, amp_dtype=amp)
        curves[name] = torch.stack([step(x, y) for x, y in data]).float().cpu()
    ref = curves["eager fp32"]
    return {k: float(((v - ref).abs() / ref.abs().clamp_min(1e-6)).max()) for k, v in curves.items() if k != "eager fp32"}


def fig2_architectures():
    return [("cat", c, l) for (c, l) in paper.TABLE5] + [("cont", h, None) for h in paper.TABLE6]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--groups", type=int, default=64, help="models fused for the lifelong streams")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per measurement")
    ap.add_argument("--quick", action="store_true", help="a few steps and a few architectures (CPU check)")
    ap.add_argument("--out", help="also write the table (markdown) and raw numbers (json) here")
    args = ap.parse_args(argv)
    dev = pick_device(args.device)
    cuda = dev.type == "cuda"
    steps = 3 if args.quick else args.steps
    groups = min(args.groups, 4) if args.quick else args.groups
    cmd = "python bench/speed.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    rows, raw = [], {"device": device_name(dev), "torch": torch.__version__, "command": cmd.strip()}
    variants = [("fp32", None), ("bf16", torch.bfloat16)] if cuda else [("fp32", None)]

    def on_term(signum, frame):  # `timeout` stops it: the workloads timed so far are still written
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    print(f"timing on {raw['device']} (SIGTERM: stop and write the rows timed so far)", flush=True)
    try:
        _measure(args, dev, cuda, steps, groups, variants, rows, raw)
    except SystemExit as e:
        raw["stopped"] = str(e)
    finally:
        _write(rows, raw, args.out)
    return 0


def _measure(args, dev, cuda, steps, groups, variants, rows, raw):
    if cuda:
        raw["equivalence"] = check_equivalence(dev)
        print("loss agreement with eager fp32 (max relative difference over 20 steps):", raw["equivalence"])

    streams = [("CIFAR-100 lifelong stream", lambda g: ResNet18(100, (3, 32, 32), groups=g), (3, 32, 32), 100, 50_000),
               ("Omniglot lifelong stream", lambda g: ResNet18(1623, (1, 28, 28), groups=g), (1, 28, 28), 1623, 29_214)]
    for name, make, shape, k, n in streams:
        eager = classifier_workload(make, shape, k, 11, 1, dev, steps, False, None)
        rows.append((name, "eager, 1 model, fp32", eager * n, f"extrapolated from {steps} steps", 1.0))
        for vname, amp in variants:
            fused = classifier_workload(make, shape, k, 11, groups, dev, steps, cuda, amp)
            per_run = fused * n / groups
            rows.append((name, f"engine, G={groups}{', CUDA graph' if cuda else ''}, {vname}", per_run,
                         f"per run; extrapolated from {steps} steps", eager * n / per_run))

    # issue 14: the library's Adam (one path, rates in a device tensor) against PyTorch's fused kernel
    # called once per run of equal rates, the optimizer step alone
    for label, make, rates in (
            ("Figure 2 (209, 8) autoencoder, 4 rates", lambda g: CategoricalVAE(209, 8, groups=g), paper.LR_SWEEP_FIG2),
            (f"CIFAR-100 ResNet-18, G={groups}, 1 rate", lambda g: ResNet18(100, (3, 32, 32), groups=g),
             [1e-3] * groups),
            ("LeNet students, G=10, 2 rates", lambda g: LeNet(10, (1, 28, 28), groups=g), [1e-3] * 5 + [1e-4] * 5)):
        direct = adam_workload(make, rates, dev, steps, cuda, True)
        lerp = adam_workload(make, rates, dev, steps, cuda, False)
        how = f"seconds per 1,000 optimizer steps{', CUDA graph' if cuda else ''}; from {steps} steps"
        rows.append((f"Adam step alone: {label}", "fused Adam kernel per run of equal rates (host rates)",
                     direct * 1000, how, 1.0))
        rows.append((f"Adam step alone: {label}", "GroupedAdam (lerp path, rates in a device tensor)",
                     lerp * 1000, how, direct / lerp))

    n_students, episodes = 10, 100_000
    make = lambda g: LeNet(10, (1, 28, 28), groups=g)  # noqa: E731
    eager = classifier_workload(make, (1, 28, 28), 10, 1, 1, dev, steps, False, None)
    rows.append(("Table 1 column: 10 LeNet students x 100,000 episodes", "eager, 1 student at a time, fp32",
                 eager * episodes * n_students, f"extrapolated from {steps} steps", 1.0))
    for vname, amp in variants:
        fused = classifier_workload(make, (1, 28, 28), 10, 1, n_students, dev, steps, cuda, amp)
        rows.append(("Table 1 column: 10 LeNet students x 100,000 episodes",
                     f"engine, G={n_students}{', CUDA graph' if cuda else ''}, {vname}", fused * episodes,
                     f"extrapolated from {steps} steps", eager * n_students / fused))

    # the Figure 2 sweep last: the longest to time (the rows above come back even if it is cut short)
    archs = fig2_architectures()
    if args.quick:
        archs = [a for a in archs if (a[0] == "cat" and a[1] * a[2] <= 40) or (a[0] == "cont" and a[1] <= 2)]
    batches = 50_000 // 128 + 1
    ae_steps = 2 if args.quick else max(10, steps // 10)
    tot = {"eager": 0.0, **{v: 0.0 for v, _ in variants}}
    for kind, a, b in archs:
        make = (lambda g, a=a, b=b: CategoricalVAE(a, b, groups=g)) if kind == "cat" else (lambda g, a=a: ContinuousAE(a, groups=g))
        tot["eager"] += 4 * autoencoder_workload(make, 1, dev, ae_steps, False, None) * batches
        for vname, amp in variants:
            tot[vname] += autoencoder_workload(make, 4, dev, ae_steps, cuda, amp) * batches
    label = f"Figure 2 sweep, one epoch ({len(archs)} architectures x 4 learning rates)"
    rows.append((label, "eager, 1 model at a time, fp32", tot["eager"], f"extrapolated from {ae_steps} batches", 1.0))
    for vname, _ in variants:
        rows.append((label, f"engine, 4 lrs fused{', CUDA graph' if cuda else ''}, {vname}", tot[vname],
                     f"extrapolated from {ae_steps} batches per architecture", tot["eager"] / tot[vname]))



def _write(rows, raw, out):
    lines = [f"Device: {raw['device']}; torch {raw['torch']}; command: `{raw['command']}`", "",
             "| workload | version | seconds | how measured | speed-up |", "|---|---|---|---|---|"]
    for w, v, s, how, r in rows:
        lines.append(f"| {w} | {v} | {s:,.1f} | {how} | {r:.1f}x |")
    if raw.get("stopped"):
        lines += ["", f"Incomplete: {raw['stopped']} after {len(rows)} rows (each row above was timed in full)."]
    table = "\n".join(lines)
    print(table, flush=True)
    raw["rows"] = [dict(workload=w, version=v, seconds=s, how=how, speedup=r) for w, v, s, how, r in rows]
    if out:
        out = pathlib.Path(out)
        out.write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
