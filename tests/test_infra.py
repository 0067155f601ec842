"""Cache, profiles, report and CLI contracts."""
import os
import pathlib

import numpy as np
import pytest
import torch

from recollect import paper, report
from recollect.experiments import check_profile, context


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="smoke"):
        check_profile("fast")
    with pytest.raises(ValueError):
        context("paperish")
    with pytest.raises(ValueError, match="at least one seed"):
        context("smoke", seeds=[])


def test_smoke_context_pins_cpu_and_threads():
    ctx = context("smoke", seeds=[3])
    assert ctx.device.type == "cpu" and ctx.seeds == [3] and torch.get_num_threads() == 2
    assert "profile=smoke" in ctx.describe()


def test_verdicts_and_compare():
    assert report.verdict(10.0, 10.5, 1.0) == "agrees"
    assert report.verdict(10.0, 11.5, 1.0) == "close"
    assert report.verdict(10.0, 13.0, 1.0) == "differs"
    df = report.compare([{"row": "a", "paper": 1.0, "ours": 1.2, "sd": 0.1, "runs": 5},
                         {"row": "b", "paper": 2.0, "ours": 9.0}], band=0.5, no_verdict={("b",): "slip"})
    assert list(df["verdict"]) == ["agrees", "no verdict: slip"]
    assert df.loc[0, "diff"] == pytest.approx(0.2)


def test_mean_spread():
    import pandas as pd
    df = pd.DataFrame({"k": ["a", "a", "b"], "v": [1.0, 3.0, 5.0]})
    out = report.mean_spread(df, ["k"], "v")
    assert list(out["mean"]) == [2.0, 5.0] and out["std"].iloc[1] == 0.0


def test_paper_tables_are_complete():
    assert len(paper.TABLE5) == 27 and len(paper.TABLE6) == 6
    for t in (paper.TABLE1, paper.TABLE2):
        assert all(len(t[s]) == 40 for s in ("random", "active"))
    assert paper.TABLE2["active"][(100000, "10% Sample")] == paper.TABLE2["random"][(100000, "10% Sample")]


def test_cli_lists_chapters_and_rejects_unknown(capsys):
    from recollect import cli
    assert cli.main(["list"]) == 0
    with pytest.raises(SystemExit, match="unknown chapter"):
        cli.main(["run", "no-such-chapter"])


def test_a_resumed_run_counts_the_seconds_of_its_earlier_commands(tmp_path, monkeypatch):
    """A checkpoint keeps the seconds its run had taken (over every command), so a result made in
    several commands records its whole time, not only its last command's."""
    from recollect.train import checkpoint as C

    clock = [1000.0]
    monkeypatch.setattr(C.time, "monotonic", lambda: clock[0])
    path = tmp_path / "item-0123456789abcdef"
    assert C.prior_seconds(path) == 0.0
    ck = C.Checkpointer(path, every=0)
    clock[0] += 100.0
    ck.maybe_save(lambda: {"x": 1})
    assert C.prior_seconds(path) == 100.0  # the first command's 100 s
    ck2 = C.Checkpointer(path, every=0)  # the next command resumes
    assert ck2.load() == {"x": 1} and ck2.prior == 100.0
    clock[0] += 50.0
    ck2.maybe_save(lambda: {"x": 2})
    assert C.prior_seconds(path) == 150.0
    ck2.done()
    assert C.prior_seconds(path) == 0.0 and not list(tmp_path.iterdir())


def test_make_venv_stops_before_pip_when_the_disk_is_too_full(tmp_path):
    """The last CI run died half-way through pip with 'No space left on device': `make venv` checks the
    free disk first and stops with a message that says what is free, what is needed and how to go on."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = pathlib.Path(__file__).resolve().parents[1]
    (tmp_path / "recollect").mkdir()
    for f in ("Makefile", "requirements.txt", "recollect/portable.env"):
        shutil.copy(root / f, tmp_path / f)
    r = subprocess.run(["make", "venv", "VENV_GB=100000000"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "GB of disk free here" in r.stderr and "needs about 100000000 GB" in r.stderr and "VENV_GB=0" in r.stderr
    assert not (tmp_path / ".venv").exists()  # nothing was installed, nothing half-made
    # a dry run with the check met goes on to create the venv (-n: print, do not run)
    r = subprocess.run(["make", "-n", "venv", "VENV_GB=0"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "python3 -m venv" in r.stdout
