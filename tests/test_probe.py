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


def test_warm_up_and_capture_steps_are_kept_apart_from_the_steady_ones():
    """A captured step's warm-up and capture calls mark their step (``probe.unsteady``); a loop's time
    per step is its steady steps' (the replays), the warm-up's only when there is no other."""
    import time

    with probe.Recorder() as rec:
        for i in range(5):
            probe.tick("step")
            if i < 2:
                probe.unsteady()
                time.sleep(0.02)  # an eager warm-up, then the capture: slow
        probe.tick("only-warm")
        probe.unsteady()
        time.sleep(0.01)
    st = rec.loops["step"]
    assert st.steps == 5 and len(st.warm) == 2 and len(st.seconds) == 3
    assert st.per_step() < 0.01 and st.to_dict()["steady"] == 3
    assert rec.loops["only-warm"].per_step() >= 0.01  # no steady step: the warm-up's time, not nothing


def test_a_captured_step_warms_up_once_under_a_probe():
    from recollect.train.capture import CapturedStep

    step = CapturedStep(lambda: None, warmup=3)
    assert step.warmup_calls() == 3
    with probe.Recorder():
        assert probe.active() and step.warmup_calls() == probe.PROBE_WARMUP == 1
    assert not probe.active() and step.warmup_calls() == 3
