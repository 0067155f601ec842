"""recollect.train.probe: per-loop step counts, times, FLOPs and launches for the plan and preflight."""
import torch
import torch.nn.functional as F

from recollect.train import probe


def test_ticks_outside_a_recorder_do_nothing():
    probe.tick("x")  # no recorder: no error, no state


def test_steps_are_attributed_to_their_loops():
    with probe.Recorder() as rec:
        for _ in range(4):
            probe.tick("train")
            for _ in range(2):
                probe.tick("eval")
    assert rec.loops["train"].steps == 4 and rec.loops["eval"].steps == 8
    assert len(rec.loops["train"].seconds) == 4 and rec.loops["train"].per_step() >= 0


def test_counting_sees_flops_and_launches_of_one_step():
    w = torch.randn(32, 16)
    with probe.Recorder(count=True, count_steps=1, skip=1) as rec:
        for _ in range(3):
            probe.tick("mm")
            x = torch.randn(8, 32)
            (x @ w).relu()
    st = rec.loops["mm"]
    assert st.counted == 1 and st.flops_per_step() == 2 * 8 * 32 * 16
    assert st.launches_per_step() >= 3  # randn, mm, relu


def test_grouped_convolution_backward_counts_as_groups_separate_models():
    """PyTorch's formula counts a grouped convolution's weight gradient groups times over; the probe's
    does not: G fused models cost G times one model."""
    def flops(groups):
        x = torch.randn(8, groups * 16, 14, 14, requires_grad=True)
        w = torch.randn(groups * 32, 16, 5, 5, requires_grad=True)
        c = probe._Counter()
        with c:
            F.conv2d(x, w, groups=groups).sum().backward()
        return c.flops()

    assert flops(4) == 4 * flops(1)
