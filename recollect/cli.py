"""Command line: re-execute a chapter, or regenerate its smoke regression copy.

    python -m recollect list
    python -m recollect run CHAPTER --profile paper     # executes book/<chapter>.ipynb in place
    python -m recollect smoke [CHAPTER ...]             # tests/notebooks/<name>.ipynb at profile smoke

Execution goes through papermill (progress bars on stderr); the notebook's ``parameters`` cell takes
``profile``, ``seeds`` and ``device``. Results are cached (``$RECOLLECT_CACHE``), so a run that is
stopped resumes where it was when the same command is given again.
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
    import papermill as pm

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recollect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the chapters")
    run = sub.add_parser("run", help="execute a chapter notebook in place")
    run.add_argument("chapter")
    run.add_argument("--profile", default="paper", choices=["smoke", "paper"])
    run.add_argument("--seeds", type=int, nargs="+")
    run.add_argument("--device")
    smoke = sub.add_parser("smoke", help="regenerate the smoke regression copies under tests/notebooks")
    smoke.add_argument("chapter", nargs="*")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for name, path in chapters().items():
            print(f"{name:24s} {path.relative_to(ROOT)}")
        return 0
    if args.cmd == "run":
        src = _resolve(args.chapter)
        execute(src, src, args.profile, args.seeds, args.device)
        return 0
    names = args.chapter or list(chapters())
    SMOKE_DIR.mkdir(parents=True, exist_ok=True)
    import tempfile

    # the regression copy is made from an empty results cache, as nbval will re-execute it
    os.environ["RECOLLECT_CACHE"] = tempfile.mkdtemp(prefix="recollect-smoke-")
    for name in names:
        src = _resolve(name)
        execute(src, SMOKE_DIR / f"{name}.ipynb", "smoke")
        print(f"wrote {(SMOKE_DIR / (name + '.ipynb')).relative_to(ROOT)}", file=sys.stderr)
    return 0
