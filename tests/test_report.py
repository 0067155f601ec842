"""report.table and report.status_banner: the book's tables and status admonitions.

Their outputs are compared by nbval (text/plain and text/html), so both must be identical from run to
run; the tables show no index column, the paper's digits and coloured verdicts, and fold long tables.
"""
import html as html_lib
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from recollect import report

ROWS = [{"c": 8, "l": 2, "paper": 20.6667, "ours": 20.61, "sd": 0.012, "runs": 5},
        {"c": 16, "l": 4, "paper": 30.1, "ours": 30.9, "sd": 0.3, "runs": 5},
        {"c": 32, "l": 8, "paper": 40.0, "ours": 42.5, "sd": 0.25, "runs": 5},
        {"c": 4, "l": 2, "paper": None, "ours": 3.0, "sd": 0.0, "runs": 5},
        {"c": 2, "l": 2, "paper": 209.067, "ours": 1.0, "sd": 0.0, "runs": 5}]
NV = {(2, 2): "the paper's cell is a misprint"}


def compared():
    return report.compare(ROWS, band=0.5, digits=1, no_verdict=NV)


def cells(html, tag="td"):
    return re.findall(rf"<{tag}[^>]*>([^<]*)</{tag}>", html)


def body_rows(html):
    return re.findall(r"<tr>\s*(<td.*?)</tr>", html, flags=re.S)


def test_text_and_html_are_identical_from_call_to_call():
    a, b = report.table(compared(), digits=1, caption="Table 5"), report.table(compared(), digits=1, caption="Table 5")
    assert repr(a) == repr(b) and a._repr_html_() == b._repr_html_()
    # a memory address (as in a Styler's repr) would make nbval fail on every run
    assert " at 0x" not in repr(a) and "object at" not in a._repr_html_()


def test_table_id_is_the_same_in_another_process_and_differs_between_tables():
    code = ("from recollect import report; import pandas as pd; "
            "print(report.table(pd.DataFrame({'a': [1.5, 2.25], 'verdict': ['agrees', 'close']})).table_id)")
    env = dict(os.environ, PYTHONHASHSEED="123", PYTHONPATH=os.pathsep.join(sys.path))
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    here = report.table(pd.DataFrame({"a": [1.5, 2.25], "verdict": ["agrees", "close"]}))
    assert other.stdout.strip() == here.table_id
    assert f'id="{here.table_id}"' in here._repr_html_()
    there = report.table(pd.DataFrame({"a": [1.5, 2.5], "verdict": ["agrees", "close"]}))
    assert there.table_id != here.table_id
    assert report.table(compared(), table_id="t5").table_id == "t5"


def test_no_index_column():
    t = report.table(compared(), digits=1)
    html = t._repr_html_()
    assert "row_heading" not in html and 'class="blank' not in html and "index_name" not in html
    assert cells(html, "th") == ["c", "l", "paper", "ours", "± sd", "runs", "diff", "verdict"]
    assert repr(t).splitlines()[0].split() == ["c", "l", "paper", "ours", "±", "sd", "runs", "diff", "verdict"]
    assert repr(t).splitlines()[1].split()[:2] == ["8", "2"]  # no 0..N in front
    # a meaningful index becomes an ordinary column
    named = pd.DataFrame({"acc": [0.5, 0.75]}, index=pd.Index(["a", "b"], name="method"))
    assert report.table(named).data.columns.tolist() == ["method", "acc"]


def test_numbers_at_the_digits_asked():
    t = report.table(compared(), digits=1)
    assert t.data["paper"].tolist() == ["20.7", "30.1", "40.0", "–", "209.1"]
    assert t.data["runs"].tolist() == ["5"] * 5                        # integers stay integers
    assert t.data["diff"].tolist()[:3] == ["-0.1", "+0.8", "+2.5"]     # the difference carries its sign
    assert t.numbers["ours"].tolist() == [20.6, 30.9, 42.5, 3.0, 1.0]
    per = report.table(compared(), digits={"paper": 2, "ours": 0, "± sd": 3})
    assert per.data["paper"].tolist()[0] == "20.67"
    assert per.data["ours"].tolist()[0] == "21"
    assert per.data["± sd"].tolist()[0] == "0.012"
    assert per.data["diff"].tolist()[0] == "-0.06"                     # not named: 2 digits
    assert "20.6667" not in repr(per) and "20.6667" not in per._repr_html_()
    assert report.table(pd.DataFrame({"diff": [-0.001, 0.0]}), digits=2).data["diff"].tolist() == ["0.00", "0.00"]
    with pytest.raises(ValueError, match="columns the table does not have"):
        report.table(compared(), digits={"papr": 1})
    # one run: no spread to show (a dash, not 0)
    one = report.compare([dict(c=6, l=2, paper=0.14, ours=0.12, sd=0.0, runs=1),
                          dict(c=8, l=2, paper=0.10, ours=0.11, sd=0.0, runs=2)], band=0.01)
    assert report.table(one, digits=2).data["± sd"].tolist() == ["–", "0.00"]


def test_verdict_cells_are_coloured():
    t = report.table(compared(), digits=1)
    html = t._repr_html_()
    want = {"agrees": "#d1e7dd", "close": "#fff3cd", "differs": "#f8d7da", "no verdict": "#e2e3e5"}
    got = dict(re.findall(r'<td class="[^"]*\brc-([a-z-]+)"[^>]*>([^<]*)</td>', html))
    by_text = {v.split(":")[0]: k for k, v in got.items()}
    for v, colour in want.items():
        cls = "rc-" + v.replace(" ", "-")
        assert by_text[v] == cls[3:], (v, got)
        assert re.search(rf"td\.{cls} \{{background-color: {colour};", html), (v, colour)
    # the reason of a "no verdict" stays readable, in grey
    assert "no verdict: the paper's cell is a misprint" in html_lib.unescape(html)
    claims = report.table(report.claims_table([("x", True, "e"), ("y", False, "f")]))
    assert 'rc-holds" >holds<' in claims._repr_html_() and 'rc-does-not-hold" >does not hold<' in claims._repr_html_()
    plain = report.table(compared(), verdict_col=None)._repr_html_()
    assert not re.search(r"rc-(agrees|close|differs|no-verdict)", plain)


def test_long_tables_fold():
    t = report.table(compared(), digits=1, fold_after=2)
    html = t._repr_html_()
    head, _, tail = html.partition("<details>")
    assert tail and "show the other 3 of 5 rows" in tail
    assert len(body_rows(head)) == 2 and len(body_rows(tail)) == 3
    assert len(repr(t).splitlines()) == 6          # the plain text keeps every row (header + 5)
    short = report.table(compared(), fold_after=5)._repr_html_()
    assert "<details>" not in short and len(body_rows(short)) == 5
    with pytest.raises(ValueError, match="fold_after"):
        report.table(compared(), fold_after=0)


def test_cells_and_caption_are_escaped():
    t = report.table(pd.DataFrame({"name <b>": ["a<script>"], "v": [np.nan]}), caption="x < y")
    html = t._repr_html_()
    assert "<script>" not in html and "a&lt;script&gt;" in html and "x &lt; y" in html
    assert repr(t).splitlines()[0] == "x < y" and "a<script>" in repr(t)


def test_status_banner_smoke():
    b = report.status_banner("smoke", chapter="distortion")
    html, text = b._repr_html_(), repr(b)
    assert html == report.status_banner("smoke", chapter="distortion")._repr_html_()
    assert text == repr(report.status_banner("smoke", chapter="distortion"))
    assert html.startswith('<div class="admonition warning') and '<p class="admonition-title">' in html
    for s in (" ".join(text.split()), html):
        assert "regression check of the code on CPU subsets" in s
        assert "say nothing about the paper" in s
        assert "python -m recollect run distortion --profile paper" in s
    assert " at 0x" not in text


def test_status_banner_paper():
    state = dict(chapter="lifelong-cifar100", device="NVIDIA H200", date="2026-11-02", gpu_minutes=42.4,
                 command="python -m recollect run lifelong-cifar100 --profile paper")
    done = report.status_banner("paper", state)
    assert 'class="admonition note' in done._repr_html_()
    for s in (" ".join(repr(done).split()), done._repr_html_()):
        assert "paper profile" in s and "NVIDIA H200" in s and "2026-11-02" in s and "42 GPU-minutes" in s
        assert "python -m recollect run lifelong-cifar100 --profile paper" in s
    part = report.status_banner("paper", report.ChapterState(**state, missing=("Table 4",), stale=("Figure 5",)))
    assert 'class="admonition warning' in part._repr_html_()
    for s in (" ".join(repr(part).split()), part._repr_html_()):
        assert "Table 4" in s and "Figure 5" in s and "not current" in s
    with pytest.raises(ValueError, match="unknown profile"):
        report.status_banner("fast")
    with pytest.raises(ValueError, match="unknown state fields"):
        report.status_banner("paper", {"gpu": "H200"})


def test_chapter_state_from_item_states():
    states = [dict(name="table5", state="done", gpu=True, device="NVIDIA H200", on_gpu=True, seconds=1800.0,
                   date="2026-11-02T10:00:00Z"),
              dict(name="table6", state="stale", gpu=True, device="NVIDIA H100", on_gpu=True, seconds=600.0,
                   date="2026-11-03T09:00:00Z"),
              dict(name="jpeg", state="done", gpu=False, device="cpu", on_gpu=False, seconds=600.0,
                   date="2026-11-01T09:00:00Z"),
              dict(name="ae-small", state="done", gpu=True, device="cpu", on_gpu=False, seconds=1200.0,
                   date="2026-11-01T10:00:00Z"),
              dict(name="figure2", state="missing", gpu=True),
              dict(name="new-item", state="unversioned", gpu=True)]
    st = report.ChapterState.from_states("distortion", states, "python -m recollect run distortion --profile paper")
    # a GPU item made on a CPU counts as CPU time, not GPU time
    assert (st.device, st.date, st.gpu_minutes, st.cpu_minutes) == ("NVIDIA H200, cpu", "2026-11-02", 30.0, 30.0)
    assert st.missing == ("figure2", "new-item") and st.stale == ("table6",)
    text = " ".join(repr(report.status_banner("paper", st)).split())
    assert "NVIDIA H200, cpu on 2026-11-02, 30 GPU-minutes and 30 CPU-minutes" in text
    assert "figure2" in text and "table6" in text
    assert "python -m recollect run distortion --profile paper" in text
