"""Tests of recollect.buffers: reservoir sampling (section 5.2) and the recollection buffer (section 4.3)."""
import math

import pytest
import torch

from recollect.buffers import RecollectionBuffer, RehearsalBuffer, ReservoirBuffer
from recollect.codes import packed_bits


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _codes(G, n, c, l, seed=0):
    return torch.randint(0, l, (G, n, c), generator=_gen(seed))


def _labels(G, n, start=0):
    item = torch.arange(start, start + n).expand(G, n).contiguous()
    return item, item % 7


# ------------------------------------------------------------------ reservoir sampling
CAP, STREAM, REPS = 10, 100, 4000
# Under algorithm R every item of the stream ends in a given buffer with probability CAP / STREAM, so
# over REPS independent buffers its count is Binomial(REPS, 0.1): mean 400, sd sqrt(4000*0.1*0.9) = 19.
# Tolerance: every one of the 100 counts within 5 sd (95) of 400. For a correct rule the chance that
# any count strays that far is about 100 * 5.7e-7 < 1e-4 (and the seed is fixed).
MEAN = REPS * CAP / STREAM
TOL = 5 * math.sqrt(REPS * (CAP / STREAM) * (1 - CAP / STREAM))


def _inclusion_counts(final_items: torch.Tensor) -> torch.Tensor:
    """final_items (REPS, CAP) of stream indices -> how many buffers hold each stream item."""
    return torch.bincount(final_items.reshape(-1), minlength=STREAM)


def _uniform(counts) -> bool:
    return bool(((counts.double() - MEAN).abs() <= TOL).all())


@pytest.mark.parametrize("one_at_a_time", [True, False])
def test_reservoir_inclusion_is_uniform(one_at_a_time):
    buf = RecollectionBuffer(CAP, c=4, l=2, groups=REPS)
    g = _gen(1)
    codes = _codes(REPS, STREAM, 4, 2)
    item, task = _labels(REPS, STREAM)
    if one_at_a_time:  # the lifelong stream: one example per step
        for i in range(STREAM):
            buf.add(codes[:, i:i + 1], item[:, i:i + 1], task[:, i:i + 1], g)
    else:
        buf.add(codes, item, task, g)
    assert buf.seen == STREAM and len(buf) == CAP
    counts = _inclusion_counts(buf.y)
    assert counts.sum() == REPS * CAP
    assert _uniform(counts), counts
    # every group's slots hold distinct items and the codes stayed attached to their labels
    assert bool((buf.y.sort(dim=1).values.diff(dim=1) > 0).all())
    got, y, t = buf.get(torch.arange(CAP).expand(REPS, CAP))
    assert torch.equal(got, codes[torch.arange(REPS).unsqueeze(1), y]) and torch.equal(t, y % 7)


def test_biased_rule_fails_the_uniformity_check():
    # "always replace a random slot" once full: recent items are heavily over-represented
    g = _gen(2)
    slots = torch.arange(CAP).expand(REPS, CAP).clone()
    for s in range(CAP, STREAM):
        j = torch.randint(0, CAP, (REPS,), generator=g)
        slots[torch.arange(REPS), j] = s
    assert not _uniform(_inclusion_counts(slots))
    # "replace with probability 1/2": also rejected
    slots = torch.arange(CAP).expand(REPS, CAP).clone()
    for s in range(CAP, STREAM):
        j = torch.randint(0, 2 * CAP, (REPS,), generator=g)
        keep = j < CAP
        slots[torch.arange(REPS)[keep], j[keep]] = s
    assert not _uniform(_inclusion_counts(slots))


def test_batched_add_equals_sequential_add():
    G, c, l = 6, 13, 5
    codes = _codes(G, 40, c, l)
    item, task = _labels(G, 40)
    a, b = RecollectionBuffer(8, c, l, groups=G), RecollectionBuffer(8, c, l, groups=G)
    ga, gb = _gen(3), _gen(3)
    a.add(codes, item, task, ga)
    for i in range(40):
        b.add(codes[:, i:i + 1], item[:, i:i + 1], task[:, i:i + 1], gb)
    assert torch.equal(a.y, b.y) and torch.equal(a.task, b.task) and torch.equal(a.store, b.store)


# ------------------------------------------------------------------ recollection buffer
@pytest.mark.parametrize("c,l", [(620, 3), (76, 2), (6, 20), (1, 2)])
def test_codes_round_trip_and_memory(c, l):
    G, cap = 3, 17
    buf = RecollectionBuffer(cap, c, l, groups=G, n_classes=100, n_tasks=20)
    B = packed_bits(c, l)
    assert buf.bits_per_code == B and buf.code_bits_total == cap * B
    assert buf.store.dtype == torch.uint8 and buf.store.shape == (G, math.ceil(cap * B / 8))
    assert buf.label_bits_total == cap * (7 + 5)
    codes = _codes(G, 12, c, l, seed=c)
    item, task = _labels(G, 12)
    buf.add(codes[:, :5], item[:, :5], task[:, :5], _gen())
    buf.append_all(codes[:, 5:], item[:, 5:], task[:, 5:])
    assert len(buf) == 12 and buf.seen == 12
    got, y, t = buf.get(torch.arange(12).expand(G, 12))
    assert torch.equal(got, codes) and torch.equal(y, item) and torch.equal(t, task)
    assert torch.equal(buf.codes(), codes)
    idx = torch.tensor([[3, 3, 0], [11, 1, 2], [5, 6, 7]])
    got, y, _ = buf.get(idx)
    assert torch.equal(got, codes[torch.arange(G).unsqueeze(1), idx]) and torch.equal(y, idx)


def test_paper_buffer_sizes():
    # 5,000 recollections of 620 ternary variables (section 5.2 / A.4): the packed store's real size
    buf = RecollectionBuffer(5000, 620, 3)
    assert buf.bits_per_code == 984 and buf.store.numel() == 5000 * 984 // 8
    assert "984 bits each" in buf.describe()
    assert RecollectionBuffer(10, 76, 2).label_bits_total is None
    assert "uncounted" in RecollectionBuffer(10, 76, 2).describe()


def test_sample_uniform_over_filled_part():
    G = 2
    buf = RecollectionBuffer(50, 8, 4, groups=G)
    codes = _codes(G, 20, 8, 4)
    item, task = _labels(G, 20)
    buf.append_all(codes, item, task)
    got, y, t = buf.sample(4000, _gen(5))
    assert got.shape == (G, 4000, 8) and y.shape == t.shape == (G, 4000)
    assert int(y.max()) < 20  # only the filled part
    assert torch.equal(got, codes[torch.arange(G).unsqueeze(1), y])
    counts = torch.stack([torch.bincount(y[g], minlength=20) for g in range(G)])
    assert bool(((counts - 200).abs() < 5 * math.sqrt(4000 * 0.05 * 0.95)).all())
    assert not torch.equal(y[0], y[1])  # groups sample independently
    idx = buf.sample_indices(3, _gen(5))
    assert idx.shape == (G, 3) and idx.dtype == torch.int64


def test_state_save_load_resumes_identically(tmp_path):
    G, c, l = 3, 30, 6
    codes = _codes(G, 60, c, l)
    item, task = _labels(G, 60)
    a = RecollectionBuffer(12, c, l, groups=G)
    g = _gen(7)
    a.add(codes[:, :40], item[:, :40], task[:, :40], g)
    path = tmp_path / "buf.pt"
    torch.save(a.state_dict(), path)
    gstate = g.get_state()

    b = RecollectionBuffer(12, c, l, groups=G)
    b.load_state_dict(torch.load(path))
    assert b.seen == 40 and len(b) == 12
    g2 = torch.Generator()
    g2.set_state(gstate)
    for buf, gen in ((a, g), (b, g2)):
        buf.add(codes[:, 40:], item[:, 40:], task[:, 40:], gen)
    sa, sb = a.sample(25, g), b.sample(25, g2)
    for x, y in zip(sa, sb):
        assert torch.equal(x, y)
    assert torch.equal(a.store, b.store) and a.seen == b.seen == 60


def test_load_state_of_another_shape_fails():
    a = RecollectionBuffer(12, 30, 6, groups=2)
    for other in (RecollectionBuffer(13, 30, 6, groups=2), RecollectionBuffer(12, 31, 6, groups=2),
                  RecollectionBuffer(12, 30, 5, groups=2), RecollectionBuffer(12, 30, 6, groups=1)):
        with pytest.raises(ValueError, match="cannot load"):
            other.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="cannot load"):
        RehearsalBuffer(12, (1, 4, 4), groups=2).load_state_dict(a.state_dict())


def test_errors():
    with pytest.raises(ValueError, match="capacity"):
        RecollectionBuffer(0, 4, 2)
    with pytest.raises(ValueError, match="capacity"):
        RehearsalBuffer(0, (1, 28, 28))
    buf = RecollectionBuffer(4, 3, 5, groups=2)
    with pytest.raises(ValueError, match="the buffer is empty: add examples before sampling"):
        buf.sample(1, _gen())
    bad = torch.zeros(2, 1, 3, dtype=torch.int64)
    bad[1, 0, 2] = 5
    y = torch.zeros(2, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"code value 5 at index \(1, 0, 2\) is outside the valid range \[0, 5\)"):
        buf.add(bad, y, y, _gen())
    with pytest.raises(ValueError, match="integer dtype"):
        buf.add(bad.float(), y, y, _gen())
    with pytest.raises(ValueError, match="shape"):
        buf.add(torch.zeros(1, 1, 3, dtype=torch.int64), y[:1], y[:1], _gen())
    with pytest.raises(ValueError, match="y must be"):
        buf.add(torch.zeros(2, 1, 3, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64), y, _gen())
    with pytest.raises(ValueError, match="generator"):
        buf.add(torch.zeros(2, 1, 3, dtype=torch.int64), y, y, None)
    with pytest.raises(ValueError, match="overflows"):
        buf.append_all(torch.zeros(2, 5, 3, dtype=torch.int64), torch.zeros(2, 5, dtype=torch.int64),
                       torch.zeros(2, 5, dtype=torch.int64))
    buf.append_all(torch.zeros(2, 2, 3, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64),
                   torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        buf.get(torch.tensor([[2], [0]]))


# ------------------------------------------------------------------ rehearsal buffer
def test_rehearsal_buffer_shares_the_reservoir():
    assert issubclass(RehearsalBuffer, ReservoirBuffer) and issubclass(RecollectionBuffer, ReservoirBuffer)
    G, shape = 3, (3, 4, 4)
    imgs = torch.randint(0, 256, (G, 30, *shape), generator=_gen(), dtype=torch.uint8)
    item, task = _labels(G, 30)
    r = RehearsalBuffer(9, shape, groups=G)
    k = RecollectionBuffer(9, 5, 3, groups=G)
    assert r.bits_per_item == 8 * 48 and RehearsalBuffer(1, (3, 32, 32)).bits_per_item == 24576
    # same generator stream -> the same reservoir decisions for both kinds of buffer
    r.add(imgs, item, task, _gen(11))
    k.add(_codes(G, 30, 5, 3), item, task, _gen(11))
    assert torch.equal(r.y, k.y) and r.seen == 30 and len(r) == 9
    got, y, t = r.get(torch.arange(9).expand(G, 9))
    assert torch.equal(got, imgs[torch.arange(G).unsqueeze(1), y])
    s_imgs, s_y, _ = r.sample(5, _gen())
    assert s_imgs.shape == (G, 5, *shape) and s_imgs.dtype == torch.uint8
    # state round trip
    r2 = RehearsalBuffer(9, shape, groups=G)
    r2.load_state_dict(r.state_dict())
    assert torch.equal(r2.images, r.images) and r2.seen == 30
    with pytest.raises(ValueError, match="uint8"):
        r.add(imgs.float(), item, task, _gen())
    with pytest.raises(ValueError, match="overflows"):
        RehearsalBuffer(2, shape, groups=G).append_all(imgs[:, :3], item[:, :3], task[:, :3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_buffer():
    G, c, l = 4, 620, 3
    buf = RecollectionBuffer(100, c, l, groups=G, device="cuda")
    codes = torch.randint(0, l, (G, 150, c), device="cuda")
    item = torch.arange(150, device="cuda").expand(G, 150).contiguous()
    buf.add(codes, item, item, torch.Generator(device="cuda").manual_seed(0))
    got, y, _ = buf.get(torch.arange(100, device="cuda").expand(G, 100))
    assert torch.equal(got, codes[torch.arange(G, device="cuda").unsqueeze(1), y])
    got, y, _ = buf.sample(10, torch.Generator().manual_seed(0))  # a CPU generator works too
    assert got.device.type == "cuda"


# ------------------------------------------------------------------ the step's fast path (offer / draw / read)
def test_offer_is_reservoir_sampling_on_the_device():
    """``offer``: algorithm R decided on the device (a masked write, no branch): uniform inclusion."""
    buf = RecollectionBuffer(CAP, c=4, l=2, groups=REPS)
    g = _gen(4)
    codes = _codes(REPS, STREAM, 4, 2)
    item, task = _labels(REPS, STREAM)
    for i in range(STREAM):
        buf.offer(codes[:, i], item[:, i], task[:, i], g)
    assert buf.seen == STREAM and len(buf) == CAP
    counts = _inclusion_counts(buf.y)
    assert counts.sum() == REPS * CAP and _uniform(counts), counts
    assert bool((buf.y.sort(dim=1).values.diff(dim=1) > 0).all())
    got, y, t = buf.get(torch.arange(CAP).expand(REPS, CAP))
    assert torch.equal(got, codes[torch.arange(REPS).unsqueeze(1), y]) and torch.equal(t, y % 7)


def test_offer_fills_in_order_then_replaces():
    imgs = torch.randint(0, 256, (2, 6, 1, 3, 3), generator=_gen(), dtype=torch.uint8)
    item, task = _labels(2, 6)
    buf = RehearsalBuffer(4, (1, 3, 3), groups=2)
    for i in range(4):
        buf.offer(imgs[:, i], item[:, i], task[:, i], _gen(i))
    assert buf.y.tolist() == [[0, 1, 2, 3]] * 2 and torch.equal(buf.images, imgs[:, :4])
    for i in range(4, 6):
        buf.offer(imgs[:, i], item[:, i], task[:, i], _gen(i))
    for gi in range(2):  # each slot holds the image of the item its label names
        assert torch.equal(buf.images[gi], imgs[gi, buf.y[gi]])


def test_fast_path_has_no_host_sync():
    from recollect.train.capture import SyncCounter
    G, g = 3, _gen(5)
    for buf, item in ((RecollectionBuffer(50, 620, 3, groups=G), torch.zeros(G, 620, dtype=torch.long)),
                      (RecollectionBuffer(9, 8, 2, groups=G), torch.ones(G, 8, dtype=torch.long)),
                      (RehearsalBuffer(5, (3, 8, 8), groups=G), torch.zeros(G, 3, 8, 8, dtype=torch.uint8))):
        y = torch.zeros(G, dtype=torch.long)
        idx, filled = buf.draw(4, g)
        assert idx.shape == (G, 4) and not bool(filled) and bool((idx == 0).all())
        buf.offer(item, y, y, g)  # warm the constant caches
        with SyncCounter() as c:
            for _ in range(12):
                buf.offer(item, y, y, g)
                idx, filled = buf.draw(4, g)
                items, ys, ts = buf.read(idx)
        c.assert_no_syncs(type(buf).__name__)
        assert c.host_tensors == 0 and bool(filled) and int(idx.max()) < min(13, buf.capacity)
        assert torch.equal(items, buf.get(idx)[0])
    with pytest.raises(ValueError, match="buffer's device"):
        buf.draw(1, None)


def test_draw_is_uniform_over_the_filled_part():
    G = 2
    buf = RecollectionBuffer(50, 8, 4, groups=G)
    item, task = _labels(G, 20)
    buf.append_all(_codes(G, 20, 8, 4), item, task)
    idx, filled = buf.draw(4000, _gen(6))
    assert bool(filled) and int(idx.max()) < 20
    counts = torch.stack([torch.bincount(idx[gi], minlength=20) for gi in range(G)])
    assert bool(((counts - 200).abs() < 5 * math.sqrt(4000 * 0.05 * 0.95)).all())
