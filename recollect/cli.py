"""Command line.

    python -m recollect list                              the chapters
    python -m recollect plan [--count]                    every paper-profile item: state, estimated GPU time
    python -m recollect run CHAPTER --profile paper       make the chapter's missing items this machine can
                                                          make (a GPU: all; a CPU: its CPU items), then
                                                          render book/<chapter>.ipynb from results/
    python -m recollect run CHAPTER --profile smoke       execute the chapter at the smoke profile in place
    python -m recollect gpu-queue --budget S --out DIR    on a GPU host: the budgeted queue (recollect.queue)
    python -m recollect unpack DIR                        results a GPU session brought back -> results/
    python -m recollect render [CHAPTER ...]              render chapters at the paper profile from results/
    python -m recollect smoke [CHAPTER ...]               regenerate the smoke copies and fingerprints
    python -m recollect dry-run [ITEM|CHAPTER ...]        every paper item at its dry config, on a CPU
    python -m recollect stage [--budget S]                prepare a GPU session: data to carry, commands
    python -m recollect overview                          write book/overview.md from results/ (make book does)
    python -m recollect join-data DIR                     on the GPU host: rebuild staged CIFAR-100

Notebooks are executed through papermill (progress bars on stderr); their ``parameters`` cell takes
``profile``, ``seeds`` and ``device``. Nothing here needs papermill except executing notebooks, so
the queue runs on a GPU host that has only torch, numpy and pandas.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
SMOKE_DIR = ROOT / "tests" / "notebooks"


def chapters() -> dict[str, pathlib.Path]:
    """Chapter name (notebook stem without its number) -> notebook path, in book order."""
    out = {}
    for p in sorted(BOOK.glob("[0-9][0-9]-*.ipynb")):
        out[p.stem.split("-", 1)[1]] = p
    return out


def _resolve(name: str) -> pathlib.Path:
    chs = chapters()
    if name not in chs:
        raise SystemExit(f"unknown chapter {name!r}; chapters: {', '.join(chs) or '(none yet)'}")
    return chs[name]


def _kernel_environment(profile: str) -> None:
    """The kernel papermill starts inherits this environment: make the checkout importable; at the
    smoke profile, fix the CPU arithmetic (``recollect.portable``: read when the kernel starts)."""
    from . import portable

    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])
    if profile == "smoke":
        portable.apply_environment()
    else:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def execute(src: pathlib.Path, dst: pathlib.Path, profile: str, seeds=None, device=None) -> None:
    try:
        import papermill as pm
    except ImportError:
        raise SystemExit("executing a notebook needs papermill (pip install -r requirements.txt); on a GPU host "
                         "without it, make results with `python -m recollect gpu-queue` and render them elsewhere")

    _kernel_environment(profile)
    params = {"profile": profile}
    if seeds is not None:
        params["seeds"] = seeds
    if device is not None:
        params["device"] = device
    # relative paths and cwd=book, so no machine path lands in the notebook's metadata
    cwd = os.getcwd()
    os.chdir(src.parent)
    try:
        pm.execute_notebook(os.path.relpath(src, src.parent), os.path.relpath(dst, src.parent),
                            parameters=params, progress_bar=True, log_output=False, cwd=".",
                            kernel_name="python3")
    finally:
        os.chdir(cwd)


def _make_items(name: str, device: str | None, names=None) -> None:
    """Make the chapter's missing paper items that this machine can make (module docstring); with
    ``names``, those items (and what they depend on) whatever the plan gives them: a GPU only makes an
    item sooner, and the narrowest autoencoders take minutes on a CPU."""
    import torch

    from . import results as R
    from .cache import checkpoints_dir
    from .experiments import items as I
    from .queue import todo

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if names:
        try:  # named items are made whatever the plan gives them; an unknown name is an error
            want = todo(R.ResultStore(), stages=None, chapters=[name], names=list(names), gpu=None)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        if not want:
            print(f"{', '.join(names)}: already current in results/", file=sys.stderr)
    else:
        want = todo(R.ResultStore(), stages=None, chapters=[name], gpu=None if dev.type == "cuda" else False)
    if dev.type != "cuda" and not names:
        gpu_left = todo(R.ResultStore(), stages=None, chapters=[name], gpu=True)
        if gpu_left:
            print(f"{len(gpu_left)} items of {name} need a GPU and are left to `python -m recollect gpu-queue` "
                  "(README, 'A GPU session')", file=sys.stderr)
    for it in want:
        print(f"making {it.key} on {dev}", file=sys.stderr)
        try:
            I.run_item(it, "paper", dev, R.ResultStore(), progress=True,
                       checkpoint_root=checkpoints_dir())
        except I.Incomplete as e:  # $RECOLLECT_TIME_LIMIT: saved, the same command continues it
            raise SystemExit(f"{it.key}: {e}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recollect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the chapters")
    run = sub.add_parser("run", help="make a chapter's items (paper) and execute its notebook in place")
    run.add_argument("chapter")
    run.add_argument("--profile", default="paper", choices=["smoke", "paper"])
    run.add_argument("--seeds", type=int, nargs="+")
    run.add_argument("--device")
    run.add_argument("--no-render", action="store_true", help="make the items only")
    run.add_argument("--item", nargs="+", metavar="NAME",
                     help="make these items on this machine, also those the plan gives a GPU (paper profile)")
    smoke = sub.add_parser("smoke", help="regenerate the smoke regression copies and fingerprints")
    smoke.add_argument("chapter", nargs="*")
    render = sub.add_parser("render", help="render chapters at the paper profile from results/ (never trains)")
    render.add_argument("chapter", nargs="*")
    render.add_argument("--force", action="store_true", help="also chapters without any paper result")
    plan = sub.add_parser("plan", help="every paper-profile item, its state and estimated GPU time")
    plan.add_argument("--chapter", nargs="*")
    plan.add_argument("--count", nargs="*", metavar="ITEM_OR_CHAPTER",
                      help="first count FLOPs and launches per step on this CPU (all items if none named)")
    dry = sub.add_parser("dry-run", help="every paper item at its dry config (paper shapes, one step per loop where the config says how)")
    dry.add_argument("items", nargs="*")
    dry.add_argument("--device", default="cpu")
    q = sub.add_parser("gpu-queue", help="on a GPU host: make the most important missing items within a budget")
    q.add_argument("--budget", type=float, required=True, help="seconds this command may use")
    q.add_argument("--out", required=True, help="folder for the results (the device tool's $OUT)")
    q.add_argument("--stage", nargs="*", default=["first"], help="first, seeds, beyond (default: first)")
    q.add_argument("--chapter", nargs="*")
    q.add_argument("--item", nargs="*", help="only these items (CHAPTER/NAME), whatever their stage")
    q.add_argument("--device", default="cuda")
    q.add_argument("--no-preflight", action="store_true")
    q.add_argument("--cpu-items", action="store_true", help="also items that need no GPU")
    q.add_argument("--dry", action="store_true", help="say what would run, run nothing (after the preflight)")
    up = sub.add_parser("unpack", help="copy results a GPU session brought back into results/")
    up.add_argument("folder")
    st = sub.add_parser("stage", help="prepare a GPU session: the data to carry and the device commands")
    st.add_argument("--budget", type=float, default=780, help="device seconds of the session (default 780)")
    st.add_argument("--stage", nargs="*", default=["first"])
    ov = sub.add_parser("overview", help="write the results overview page (book/overview.md) from results/")
    ov.add_argument("--out")
    jd = sub.add_parser("join-data", help="on a GPU host: rebuild cifar100.npz from its two staged parts")
    jd.add_argument("folder")
    args = ap.parse_args(argv)

    if args.cmd == "list":
        for name, path in chapters().items():
            print(f"{name:24s} {path.relative_to(ROOT)}")
        return 0
    if args.cmd == "run":
        src = _resolve(args.chapter)
        if args.profile == "paper":
            _make_items(args.chapter, args.device, args.item)
            if args.no_render:
                return 0
        execute(src, src, args.profile, args.seeds, args.device)
        return 0
    if args.cmd == "render":
        from .experiments import items as I

        for name in args.chapter or list(chapters()):
            src = _resolve(name)
            if not args.force and not I.renderable(name):
                print(f"{name}: no paper result of a training item yet; its book copy keeps the smoke rendering",
                      file=sys.stderr)
                continue
            execute(src, src, "paper", device="cpu")
            print(f"rendered {src.relative_to(ROOT)} at the paper profile", file=sys.stderr)
        return 0
    if args.cmd == "plan":
        from . import plan as P

        if args.count is not None:
            P.dry_run(args.count or None, count=True)
        P.print_plan(args.chapter)
        return 0
    if args.cmd == "dry-run":
        from . import plan as P

        failures = P.dry_run(args.items or None, device=args.device, count=False)
        if failures:
            print(f"{len(failures)} items failed their dry run", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "gpu-queue":
        from .queue import gpu_queue

        try:
            doc = gpu_queue(args.budget, args.out, stages=args.stage, chapters=args.chapter, names=args.item,
                            device=args.device, do_preflight=not args.no_preflight, cpu_items=args.cpu_items,
                            dry=args.dry)
        except ValueError as e:  # an unknown item name: say so, no traceback
            raise SystemExit(f"gpu-queue: {e}") from None
        return 1 if doc["failed"] else 0
    if args.cmd == "unpack":
        from .queue import unpack

        copied = unpack(pathlib.Path(args.folder))
        print(f"{len(copied)} results copied into results/; render with `make paper-book`", file=sys.stderr)
        return 0
    if args.cmd == "overview":
        from . import overview

        path = overview.write(pathlib.Path(args.out) if args.out else overview.OUT)
        print(f"wrote {path}", file=sys.stderr)
        return 0
    if args.cmd == "join-data":
        from .stage import join_cifar100

        print(f"rebuilt and checked {join_cifar100(pathlib.Path(args.folder))}", file=sys.stderr)
        return 0
    if args.cmd == "stage":
        from .stage import main as stage_main

        return stage_main(args.budget, args.stage)
    # smoke
    names = args.chapter or list(chapters())
    SMOKE_DIR.mkdir(parents=True, exist_ok=True)
    import tempfile

    from . import results as R
    from .experiments import items as I

    # the regression copy is made from an empty results cache, as nbval will re-execute it, and it
    # records each item's smoke fingerprint (the version of the paper results)
    os.environ["RECOLLECT_CACHE"] = tempfile.mkdtemp(prefix="recollect-smoke-")
    os.environ[I.FINGERPRINT_ENV] = "1"
    for name in names:
        src = _resolve(name)
        fp = R.results_dir() / I.SMOKE_DIR / f"{name}.json"
        if fp.exists():
            fp.unlink()
        execute(src, SMOKE_DIR / f"{name}.ipynb", "smoke")
        print(f"wrote {(SMOKE_DIR / (name + '.ipynb')).relative_to(ROOT)}", file=sys.stderr)
    return 0
