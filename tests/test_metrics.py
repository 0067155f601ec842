"""Lifelong metrics (GEM's definitions), checked on hand-computed matrices."""
import math

import pytest
import torch

from recollect.metrics import (average_accuracy, average_seen_accuracy, backward_transfer, forward_transfer,
                               learning_accuracy, retention, summarize)

# after task 0: [50, 10, 20]; after task 1: [40, 60, 30]; after task 2: [30, 55, 70]
R = torch.tensor([[50.0, 10.0, 20.0], [40.0, 60.0, 30.0], [30.0, 55.0, 70.0]])
B = torch.tensor([5.0, 8.0, 12.0])


def test_average_accuracy_is_the_last_row_mean():
    assert average_accuracy(R).item() == pytest.approx((30 + 55 + 70) / 3)
    assert retention is average_accuracy


def test_backward_transfer_by_hand():
    # (30 - 50) + (55 - 60) = -25 over T - 1 = 2 tasks (GEM's paper), or over T = 3 (GEM's code)
    assert backward_transfer(R).item() == pytest.approx(-12.5)
    assert backward_transfer(R, divide_by="T").item() == pytest.approx(-25 / 3)


def test_forward_transfer_by_hand():
    # R[0, 1] - b[1] = 10 - 8 = 2; R[1, 2] - b[2] = 30 - 12 = 18
    assert forward_transfer(R, B).item() == pytest.approx(10.0)
    assert forward_transfer(R, B, divide_by="T").item() == pytest.approx(20 / 3)


def test_forward_transfer_ignores_the_first_tasks_b():
    b2 = B.clone()
    b2[0] = 99.0
    assert forward_transfer(R, b2).item() == forward_transfer(R, B).item()


def test_learning_and_seen_accuracy():
    assert learning_accuracy(R).item() == pytest.approx(60.0)
    assert torch.allclose(average_seen_accuracy(R), torch.tensor([50.0, 50.0, 155 / 3]))


def test_batched_matrices_give_one_value_per_group():
    Rg = torch.stack([R, R + 1.0])
    s = summarize(Rg, torch.stack([B, B]))
    assert s["ACC"].shape == (2,)
    assert s["ACC"][1].item() == pytest.approx(s["ACC"][0].item() + 1)
    assert s["BWT"][1].item() == pytest.approx(s["BWT"][0].item())  # a constant shift cancels
    assert s["FWT"][1].item() == pytest.approx(s["FWT"][0].item() + 1)


def test_single_task():
    r = torch.tensor([[42.0]])
    assert average_accuracy(r).item() == 42.0
    assert math.isnan(backward_transfer(r).item())
    assert backward_transfer(r, divide_by="T").item() == 0.0


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(2, 3)])
def test_non_square_matrices_are_refused(bad):
    with pytest.raises(ValueError):
        average_accuracy(bad)


def test_bad_arguments():
    with pytest.raises(ValueError):
        backward_transfer(R, divide_by="N")
    with pytest.raises(ValueError):
        forward_transfer(R, torch.zeros(2))
