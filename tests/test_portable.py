"""Issue: smoke outputs must not depend on the CPU. Portable arithmetic (``recollect.portable``) is in
force for every smoke run, a run without it fails with a clear message, and a chapter re-executed on
a machine made to look different (other ISA ceilings, one core, other thread counts in the
environment) reproduces the committed smoke copy cell for cell (nbval)."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from recollect import portable

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "tests" / "notebooks"


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_settings_file_is_well_formed():
    assert portable.ENV["ATEN_CPU_CAPABILITY"] == "default"
    assert portable.ENV["MKL_CBWR"] == "COMPATIBLE"
    assert portable.THREADS >= 1 and portable.ENV["MKL_NUM_THREADS"] == portable.ENV["OMP_NUM_THREADS"]


def test_this_process_is_portable():
    """The test process (and so every kernel nbval starts from it) runs with the portable settings."""
    assert portable.problems() == []


@pytest.mark.parametrize("drop", ["ATEN_CPU_CAPABILITY", "MKL_CBWR"])
def test_smoke_context_refuses_a_non_portable_process(drop):
    env = portable.environment()
    del env[drop]
    r = _python("from recollect.experiments import context; context('smoke')", env)
    assert r.returncode != 0
    assert "portable CPU arithmetic" in r.stderr and drop in r.stderr and "portable.env" in r.stderr


def test_smoke_context_pins_threads_and_backends_whatever_the_environment_says():
    env = portable.environment()
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="3")
    r = _python("import torch; from recollect.experiments import context; from recollect import portable; "
                "context('smoke'); s = portable.settings(); "
                "print(s['threads'], s['oneDNN'], s['NNPACK'], s['PyTorch CPU kernels'])", env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(portable.THREADS), "off", "off", "default"]


# machines made to look different; every variant keeps the pinned settings and changes the rest. The
# lowered one also hides FMA, AVX2 and AVX-512 from glibc, so its maths library (expf, logf, ... that
# PyTorch's baseline kernels call) takes the code path of a CPU without them
NO_FMA_LIBM = "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ"
VARIANTS = {
    "one core, 1 thread in the environment, lowered ISA ceilings": dict(
        taskset="0", env=dict(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ONEDNN_MAX_CPU_ISA="AVX2",
                              MKL_ENABLE_INSTRUCTIONS="AVX2", OMP_WAIT_POLICY="ACTIVE",
                              GLIBC_TUNABLES=NO_FMA_LIBM)),
    "4 threads in the environment, raised ISA ceilings": dict(
        taskset=None, env=dict(OMP_NUM_THREADS="4", MKL_NUM_THREADS="4", ONEDNN_MAX_CPU_ISA="ALL",
                               MKL_ENABLE_INSTRUCTIONS="AVX512", MKL_DYNAMIC="TRUE")),
}
#: the chapter each variant re-executes: between them, the VAE (convolutions, transposed
#: convolutions), ResNet-18 with BatchNorm, Adam, MKL's eigendecomposition (PCA) and Pillow's JPEG
PROOF = {"one core, 1 thread in the environment, lowered ISA ceilings": "distortion",
         "4 threads in the environment, raised ISA ceilings": "lifelong-cifar100"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_smoke_copy_is_reproduced_on_a_machine_made_to_look_different(variant):
    """Re-execute a committed smoke copy under another machine's look and compare every checked cell."""
    v, nb = VARIANTS[variant], NOTEBOOKS / f"{PROOF[variant]}.ipynb"
    env = portable.environment()
    env.update(v["env"])
    env["RECOLLECT_CACHE"] = tempfile.mkdtemp(prefix="recollect-portable-")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
           "--nbval-sanitize-with", str(ROOT / "tests" / "nbval-sanitize.cfg"), str(nb)]
    if v["taskset"] is not None:
        if shutil.which("taskset") is None:
            pytest.skip("taskset (util-linux) is not installed")
        cmd = ["taskset", "-c", v["taskset"], *cmd]
    try:
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(env["RECOLLECT_CACHE"], ignore_errors=True)
    assert r.returncode == 0, f"{nb.name} differs under '{variant}':\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
