"""The incremental CIFAR-100 chapter's library logic: the storage accounting of Tables 3 and 4, the rows
and learning rates of appendices A.4-A.5, how the rows fuse, and the direction of each claim."""
import pandas as pd
import pytest
import torch

from recollect import accounting, paper
from recollect.experiments import Context
from recollect.experiments import lifelong_cifar as ex
from recollect.train.lifelong import fuse_groups, plan_storage


@pytest.fixture(scope="module")
def paper_cfg():
    # a Context made directly: experiments.context("smoke") would pin threads for the whole test session
    return ex.config(Context("paper", [0, 1, 2, 3, 4], torch.device("cpu")))


@pytest.fixture(scope="module")
def smoke_cfg():
    return ex.config(Context("smoke", [0, 1, 2, 3, 4], torch.device("cpu")))


def test_code_accounting_of_table3():
    t = ex.code_accounting().set_index("budget (images)")
    assert t["budget bits"].tolist() == [10 * 24576, 50 * 24576, 200 * 24576]
    # two-way codes: every encoding costs c bits
    assert t["codes (ours, used)"].tolist() == [5120, 5036, 4995]
    # 620 three-way variables: eq 1 (1,240 bits) leaves 3,963 codes; only ~c log2 l bits fit the paper's 5,000
    assert t.loc[200, "eq 1 bits"] == 1240 and t.loc[200, "codes (eq 1)"] == 3963
    assert t.loc[200, "mixed-radix bits"] == 983 and t.loc[200, "codes (mixed radix)"] == 5000
    assert t.loc[200, "packed bits (ours)"] == 984
    assert (t["paper's recollections"] == paper.TABLE3_RECOLLECTIONS).all()


def test_total_accounting_of_table4():
    t = ex.total_accounting().iloc[0]
    assert t["filters (c l / 4)"] == 38
    assert t["parameters (ours)"] == 150293
    assert t["codes (ours)"] == paper.TABLE4_RECOLLECTIONS == 1392
    assert t["bits used"] <= 200 * 24576 < t["bits used"] + 76
    lo, hi = (int(v.replace(",", "")) for v in t["parameter counts giving the paper's count"].split(" to "))
    assert lo <= t["parameters (ours)"] <= hi
    # one parameter outside the range changes the count: the range is tight
    for params, codes in ((lo - 1, 1393), (hi + 1, 1391)):
        assert accounting.recollections_that_fit(200 * 24576, 76, 32 * params) == codes


def test_paper_config_follows_appendices(paper_cfg):
    c = paper_cfg
    assert c["seeds"] == [0, 1, 2] and c["nf"] == 20 and c["lr"] == 1e-3
    assert c["budgets"] == [10, 50, 200]
    assert {int(b): tuple(v) for b, v in c["codes"].items()} == paper.TABLE3_GENERATORS
    assert c["ae_lr"] == {"10": 1e-3, "50": 1e-3, "200": 1e-4}  # A.4
    assert tuple(c["total"]["code"]) == paper.TABLE4_GENERATOR
    assert (c["total"]["ae_lr_scratch"], c["total"]["ae_lr_transfer"]) == (1e-3, 3e-4)  # A.5
    assert c["pretrain"]["images"] is None  # every CIFAR-10 image of the data file
    assert c["stream"] == dict(tasks=None, train_per_task=None, test_per_class=None)


def test_rows_paper_values_and_fusion(paper_cfg):
    rs = ex.rows(paper_cfg, "coarse")
    keys = [r["key"] for r in rs]
    assert keys == ["online", "rehearsal-10", "rehearsal-50", "rehearsal-200", "recollection-10", "recollection-50",
                    "recollection-200", "total-scratch", "total-transfer", "gem-200", "icarl-200"]
    assert [r["paper3"] for r in rs[:7]] == [33.3, 29.4, 33.4, 43.0, 38.9, 47.9, 51.6]
    assert [r["paper4"] for r in rs[7:]] == [43.7, 49.7, 48.7, 43.6]
    assert rs[3]["tables"] == ("3", "4")
    # every split runs every row at the paper profile
    assert [r["key"] for r in ex.rows(paper_cfg, "gem")] == keys
    cfgs = ex.row_configs(paper_cfg, "coarse")
    assert [c.ae_lr for c in cfgs[4:9]] == [1e-3, 1e-3, 1e-4, 1e-3, 3e-4]
    assert [c.budget_kind for c in cfgs[7:9]] == ["total", "total"]
    # online, rehearsal and recollection rows share one fused model; GEM and iCaRL run alone
    assert fuse_groups(cfgs) == [list(range(9)), [9], [10]]


def test_storage_plans_of_the_paper_rows(paper_cfg):
    caps = [plan_storage(c, (3, 32, 32), 20, 100).capacity for c in ex.row_configs(paper_cfg)]
    assert caps == [0, 10, 50, 200, 5120, 5036, 4995, 1392, 1392, 200, 200]


def test_smoke_budgets_mirror_the_paper(smoke_cfg):
    small, mid, large = smoke_cfg["budgets"]
    classes = 5 * smoke_cfg["stream"]["tasks"]
    assert small < mid < classes < large  # like 10 < 50 < 100 classes < 200
    assert len(smoke_cfg["seeds"]) == 2
    assert [r["key"] for r in ex.rows(smoke_cfg, "gem")] == smoke_cfg["second_split_rows"]
    # the smoke total budget leaves room for codes after the autoencoder's parameters
    caps = [plan_storage(c, (3, 32, 32), 3, classes) for c in ex.row_configs(smoke_cfg)]
    assert all(p.runnable for p in caps)


def _df(values):
    rows = []
    for key, acc in values.items():
        for seed, d in ((0, -0.5), (1, 0.5)):
            rows.append(dict(split="coarse", key=key, budget=int(key.split("-")[-1]) if key[-1].isdigit() else 200,
                             runnable=True, classes=100, ACC_task=acc + d))
    return pd.DataFrame(rows)


def test_claims_directions():
    paper_like = {"online": 33.3, "rehearsal-10": 29.4, "rehearsal-50": 33.4, "rehearsal-200": 43.0,
                  "recollection-10": 38.9, "recollection-50": 47.9, "recollection-200": 51.6,
                  "total-scratch": 43.7, "total-transfer": 49.7, "gem-200": 48.7, "icarl-200": 43.6}
    out = ex.claims(_df(paper_like))
    assert len(out) == 7 and all(h for _, h, _ in out)
    flipped = dict(paper_like, **{"rehearsal-10": 34.0, "total-transfer": 43.0, "recollection-50": 30.0})
    held = [h for _, h, _ in ex.claims(_df(flipped))]
    # fail: recollections at 50, rehearsal-10 below online, transfer helps, beats GEM and iCaRL
    assert held == [True, False, True, False, True, False, False]
    # a split that did not run a row gets no claim about it
    assert len(ex.claims(_df({"online": 30.0, "rehearsal-200": 40.0}))) == 1
