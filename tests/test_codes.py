"""Tests of recollect.codes: chunked mixed-radix packing and bit-addressed record storage."""
import pytest
import torch

from recollect import codes as K
from recollect.accounting import mixed_radix_bits, sbe_bits
from recollect.codes import (bits_to_bytes, bytes_to_bits, chunk_bits, max_chunk, pack, packed_bits,
                             packing_plan, read_records, read_span, record_bytes, unpack, write_records,
                             write_span)

TABLE5_SHAPES = [
    (6, 20), (10, 20), (6, 16), (12, 10), (10, 14), (24, 3), (38, 2), (6, 2), (40, 3), (20, 2), (8, 6),
    (12, 6), (30, 2), (24, 6), (4, 37), (8, 15), (48, 10), (209, 8), (12, 37), (313, 4), (392, 3),
    (50, 18), (168, 2), (108, 3), (62, 2), (208, 2), (68, 5),
]
PAPER_SHAPES = [(620, 3), (76, 2), (48, 2), (244, 2), (312, 2), (62, 2), (32, 2), (50, 2), (134, 2)]
ROUND_TRIP = [(620, 3), (76, 2), (6, 20), (4, 37), (1, 2), (1, 3), (3, 7), (70, 5), (5, 4), (7, 64), (100, 63),
              (2, 2 ** 31 + 11), (1, 2 ** 62)]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_chunk_limits():
    assert max_chunk(2) == 62 and max_chunk(3) == 39 and max_chunk(2 ** 62) == 1
    assert 3 ** 39 <= 2 ** 62 < 3 ** 40
    assert chunk_bits(39, 3) == 62 and chunk_bits(1, 3) == 2 and chunk_bits(5, 3) == 8
    with pytest.raises(ValueError, match="exceeds 2\\*\\*62"):
        chunk_bits(40, 3)


@pytest.mark.parametrize("c,l", TABLE5_SHAPES + PAPER_SHAPES)
def test_plan_is_optimal_and_within_one_bit_per_chunk(c, l):
    plan = packing_plan(c, l)
    assert sum(plan) == c and all(1 <= k <= max_chunk(l) for k in plan)
    b = packed_bits(c, l)
    assert b == sum(chunk_bits(k, l) for k in plan)
    assert mixed_radix_bits(c, l) <= b <= sbe_bits(c, l)
    assert b - mixed_radix_bits(c, l) <= len(plan)
    if l & (l - 1) == 0:  # power of two: exactly eq 1
        assert b == sbe_bits(c, l) == c * (l.bit_length() - 1)


def test_plan_dp_matches_brute_force_small():
    # exhaustive minimum over all compositions of c for a small chunk limit
    for l in (3, 5, 6, 7, 10):
        kmax = max_chunk(l)
        best = [0] + [None] * 80
        for n in range(1, 81):
            best[n] = min(best[n - k] + chunk_bits(k, l) for k in range(1, min(kmax, n) + 1))
        for c in range(1, 81):
            assert packed_bits(c, l) == best[c]


def test_paper_shapes_packed_bits():
    assert packed_bits(76, 2) == 76 and packed_bits(48, 2) == 48 and packed_bits(244, 2) == 244
    assert packed_bits(312, 2) == 312 and packed_bits(62, 2) == 62
    assert packed_bits(1, 2) == 1
    # 620 ternary variables: ceil(620 log2 3) = 983, the chunked packing needs one bit more
    assert mixed_radix_bits(620, 3) == 983
    assert packed_bits(620, 3) == 984


@pytest.mark.parametrize("c,l", ROUND_TRIP)
def test_round_trip(c, l):
    g = _gen(c * 1000 + l % 1000)
    codes = torch.randint(0, l, (3, 5, c), generator=g, dtype=torch.int64)
    codes[0, 0] = l - 1  # extreme values
    codes[0, 1] = 0
    plan = packing_plan(c, l)
    bits = pack(codes, l, plan)
    assert bits.dtype == torch.uint8 and bits.shape == (3, 5, packed_bits(c, l))
    assert int(bits.max()) <= 1
    out = unpack(bits, l, plan)
    assert out.dtype == torch.int64 and torch.equal(out, codes)
    assert torch.equal(pack(codes, l), bits)  # default plan


def test_binary_codes_take_exactly_c_bits_and_are_the_codes():
    codes = torch.randint(0, 2, (4, 76), generator=_gen())
    bits = pack(codes, 2)
    assert bits.shape == (4, 76) and torch.equal(bits.long(), codes)


@pytest.mark.parametrize("l", [2, 4, 8, 64])
def test_power_of_two_fast_path_matches_general_chunks(l):
    c = 130
    codes = torch.randint(0, l, (6, c), generator=_gen(l))
    plan = tuple(packing_plan(c, l))
    general = K._pack_chunks(codes, l, plan)
    assert torch.equal(pack(codes, l, plan), general)
    assert torch.equal(K._unpack_chunks(general, l, plan), codes)


def test_chunk_layout_lsb_first():
    # one chunk of 3 ternary digits (2, 0, 1): value 2 + 0*3 + 1*9 = 11 = 0b1011 in 5 bits
    bits = pack(torch.tensor([2, 0, 1]), 3, [3])
    assert bits.tolist() == [1, 1, 0, 1, 0]


def test_small_dtypes_accepted():
    codes = torch.randint(0, 5, (7, 9), generator=_gen(), dtype=torch.int64)
    for dt in (torch.uint8, torch.int16, torch.int32):
        assert torch.equal(unpack(pack(codes.to(dt), 5), 5, packing_plan(9, 5)), codes)


def test_validation():
    with pytest.raises(ValueError, match=r"code value 4 at index \(1, 2\) is outside the valid range \[0, 4\)"):
        codes = torch.zeros(2, 3, dtype=torch.int64)
        codes[1, 2] = 4
        pack(codes, 4)
    with pytest.raises(ValueError, match=r"code value -1 .*\[0, 3\)"):
        pack(torch.tensor([0, -1, 2]), 3)
    with pytest.raises(ValueError, match="integer dtype"):
        pack(torch.zeros(3), 3)
    with pytest.raises(ValueError, match="integer dtype"):
        pack(torch.zeros(3, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match="at least 2 categories"):
        pack(torch.zeros(3, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="c .*must be >= 1"):
        packing_plan(0, 2)
    with pytest.raises(ValueError, match="at least 2 categories"):
        packed_bits(3, 1)
    with pytest.raises(ValueError, match="plan sums to"):
        pack(torch.zeros(5, dtype=torch.int64), 3, [2, 2])
    with pytest.raises(ValueError, match="bits must be a tensor"):
        unpack(torch.zeros(4, dtype=torch.uint8), 3, [3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        unpack(torch.full((5,), 2, dtype=torch.uint8), 3, [3])
    with pytest.raises(ValueError, match="valid code"):
        unpack(torch.ones(5, dtype=torch.uint8), 3, [3])  # 31 >= 27


def test_bits_bytes_round_trip_little_endian():
    bits = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.uint8)
    data = bits_to_bytes(bits)
    assert data.tolist() == [129, 3]
    assert torch.equal(bytes_to_bits(data, 10), bits)
    x = torch.randint(0, 2, (3, 4, 37), generator=_gen(), dtype=torch.uint8)
    assert torch.equal(bytes_to_bits(bits_to_bytes(x), 37), x)
    with pytest.raises(ValueError):
        bytes_to_bits(data, 17)


@pytest.mark.parametrize("width", [1, 3, 7, 8, 9, 26, 62, 984])
def test_records_round_trip_and_neighbours_untouched(width):
    g = _gen(width)
    G, R = 3, 23
    store = torch.zeros(G, record_bytes(R, width), dtype=torch.uint8)
    assert store.shape[1] == (R * width + 7) // 8
    # fill everything, then rewrite random subsets (adjacent rows included) and compare with a model
    model = torch.randint(0, 2, (G, R, width), generator=g, dtype=torch.uint8)
    write_records(store, torch.arange(R).expand(G, R).contiguous(), model)
    assert torch.equal(read_records(store, torch.arange(R).expand(G, R), width), model)
    for _ in range(5):
        rows = torch.stack([torch.randperm(R, generator=g)[:7] for _ in range(G)])
        new = torch.randint(0, 2, (G, 7, width), generator=g, dtype=torch.uint8)
        write_records(store, rows, new)
        model[torch.arange(G).unsqueeze(1), rows] = new
        assert torch.equal(read_records(store, torch.arange(R).expand(G, R), width), model)
    # single-record writes (one per group) at adjacent offsets
    for r in (4, 5, 6):
        new = 1 - model[:, r:r + 1]
        write_records(store, torch.full((G, 1), r), new)
        model[:, r:r + 1] = new
    assert torch.equal(read_records(store, torch.arange(R).expand(G, R), width), model)
    # spans
    new = torch.randint(0, 2, (G, 3 * width), generator=g, dtype=torch.uint8)
    write_span(store, 9 * width, new)
    model[:, 9:12] = new.reshape(G, 3, width)
    assert torch.equal(read_span(store, 0, R * width).reshape(G, R, width), model)


def test_adjacent_writes_do_not_clobber_ones():
    # a width-5 record written with zeros between neighbours of all ones leaves them all ones
    width, R = 5, 8
    store = torch.full((1, record_bytes(R, width)), 255, dtype=torch.uint8)
    write_records(store, torch.tensor([[3]]), torch.zeros(1, 1, width, dtype=torch.uint8))
    bits = bytes_to_bits(store)[0]
    expected = torch.ones(store.shape[1] * 8, dtype=torch.uint8)
    expected[15:20] = 0
    assert torch.equal(bits, expected)


def test_write_records_mask_and_errors():
    store = torch.zeros(2, record_bytes(4, 6), dtype=torch.uint8)
    bits = torch.ones(2, 2, 6, dtype=torch.uint8)
    write_records(store, torch.tensor([[0, 1], [2, 3]]), bits, mask=torch.tensor([[True, False], [False, True]]))
    got = read_records(store, torch.arange(4).expand(2, 4), 6).sum(-1)
    assert got.tolist() == [[6, 0, 0, 0], [0, 0, 0, 6]]
    with pytest.raises(ValueError, match="distinct"):
        write_records(store, torch.tensor([[1, 1], [0, 2]]), bits)
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 4\)"):
        read_records(store, torch.tensor([[4], [0]]), 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_round_trip():
    c, l = 620, 3
    codes = torch.randint(0, l, (2, 50, c), device="cuda")
    bits = pack(codes, l)
    assert bits.device.type == "cuda" and torch.equal(unpack(bits, l, packing_plan(c, l)), codes)
    store = torch.zeros(2, record_bytes(60, bits.shape[-1]), dtype=torch.uint8, device="cuda")
    rows = torch.stack([torch.randperm(60, device="cuda")[:50] for _ in range(2)])
    write_records(store, rows, bits)
    assert torch.equal(read_records(store, rows, bits.shape[-1]), bits)


@pytest.mark.parametrize("c,l,cap", [(620, 3, 17), (8, 2, 1), (5, 3, 3), (76, 2, 9), (1, 2, 1), (13, 5, 8)])
def test_fast_row_write_and_read_equal_the_checked_ones(c, l, cap):
    """``write_row_where`` / ``read_rows`` (the buffer's step, no validation, no host sync) against
    ``write_records`` / ``read_records``, on random stores, rows at the ends included."""
    from recollect.codes import _pack, read_rows, write_row_where
    from recollect.train.capture import SyncCounter
    G, g = 4, torch.Generator().manual_seed(c + cap)
    plan, w = tuple(packing_plan(c, l)), packed_bits(c, l)
    store = torch.randint(0, 256, (G, record_bytes(cap, w)), dtype=torch.uint8, generator=g)
    ref = store.clone()
    for it in range(20):
        rows = torch.randint(0, cap, (G,), generator=g)
        rows[0] = cap - 1
        bits = _pack(torch.randint(0, l, (G, c), generator=g), l, plan)
        mask = torch.rand(G, generator=g) < 0.6
        with SyncCounter() as sc:
            write_row_where(store, rows, bits, mask)
            got = read_rows(store, rows.view(G, 1).expand(G, 3).contiguous(), w)
        assert not sc.syncs and (sc.host_tensors == 0 or it == 0)
        write_records(ref, rows.view(G, 1), bits.view(G, 1, w), mask.view(G, 1))
        assert torch.equal(store, ref)
        assert torch.equal(got, read_records(ref, rows.view(G, 1).expand(G, 3), w))
