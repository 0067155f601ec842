"""Tests of recollect.accounting against the paper's printed numbers (section 3, Tables 5 and 6)."""
import itertools
import math

import pytest
import torch

from recollect.accounting import (capacity_bits, compression_ratio, continuous_bits, image_bits,
                                  mixed_radix_bits, param_bits, param_count, recollections_that_fit,
                                  sbe_bits, search_incremental, search_total)

MNIST_BITS = 6272
CIFAR_BITS = 24576

# Table 5 (appendix A.1): (c, l, compression as printed), compression = 6272 / (c * ceil(log2 l)).
TABLE5 = [
    (6, 20, 209.067), (10, 20, 125.440), (6, 16, 261.333), (12, 10, 130.667), (10, 14, 156.800),
    (24, 3, 130.667), (38, 2, 165.053), (6, 2, 1045.333), (40, 3, 78.400), (20, 2, 313.600),
    (8, 6, 261.333), (12, 6, 174.222), (30, 2, 209.067), (24, 6, 87.111), (4, 37, 261.333),
    (8, 15, 196.000), (48, 10, 32.667), (209, 8, 10.003), (12, 37, 87.111), (313, 4, 10.019),
    (392, 3, 8.000), (50, 18, 25.088), (168, 2, 37.333), (108, 3, 29.037), (62, 2, 101.161),
    (208, 2, 30.154), (68, 5, 30.745),
]
# Table 6: continuous latents of 4h floats, compression as printed.
TABLE6 = [(1, "49"), (2, "24.5"), (3, "16.33333333"), (5, "9.8"), (7, "7"), (20, "2.45")]


def test_image_bits_section3():
    assert image_bits((28, 28)) == MNIST_BITS == image_bits((1, 28, 28))
    assert image_bits((3, 32, 32)) == CIFAR_BITS
    assert image_bits((3, 32, 32), bits_per_value=1) == 3072
    assert image_bits(torch.Size([2, 5])) == 80


def test_table5_compression_all_rows():
    assert len(TABLE5) == 27
    for c, l, printed in TABLE5:
        got = compression_ratio((28, 28), sbe_bits(c, l))
        assert round(got, 3) == pytest.approx(printed, abs=1e-9), (c, l, got, printed)
        assert got == MNIST_BITS / (c * math.ceil(math.log2(l)))


def test_table6_continuous_compression():
    for h, printed in TABLE6:
        bits = continuous_bits(4 * h)
        assert bits == 128 * h
        got = compression_ratio(MNIST_BITS, bits)
        assert got == pytest.approx(49 / h)
        decimals = len(printed.split(".")[1]) if "." in printed else 0
        assert round(got, decimals) == float(printed), (h, got, printed)


def test_section51_ratios():
    # Section 5.1 / A.2: 168, 62 and 38 binary variables for "10x", "50x" and "100x"; the exact
    # ratios are the 37x, 101x and 165x of Table 5.
    assert [round(MNIST_BITS / sbe_bits(c, 2)) for c in (168, 62, 38)] == [37, 101, 165]


def test_eq1_eq2_and_mixed_radix():
    assert sbe_bits(6, 20) == 30 and sbe_bits(4, 37) == 24 and sbe_bits(38, 2) == 38
    assert sbe_bits(1, 2) == 1 and sbe_bits(3, 16) == 12 and sbe_bits(3, 17) == 15
    assert capacity_bits(38, 2) == 38.0
    assert capacity_bits(620, 3) == pytest.approx(620 * math.log2(3))
    for c, l in itertools.product(range(1, 40), range(2, 70)):
        exact = mixed_radix_bits(c, l)
        assert exact == (l ** c - 1).bit_length()
        assert exact - 1 < c * math.log2(l) <= exact + 1e-9
        assert exact <= sbe_bits(c, l)
        if l & (l - 1) == 0:
            assert exact == sbe_bits(c, l)


def test_cifar_620_three_way_case():
    # Section 5.2 / A.4: 200 CIFAR images of budget spread over 5,000 recollections.
    rate = 200 * CIFAR_BITS / 5000
    assert rate == 983.04
    assert mixed_radix_bits(620, 3) == 983 <= rate
    assert sbe_bits(620, 3) == 1240 > rate
    assert recollections_that_fit(200 * CIFAR_BITS, 983) == 5000
    assert recollections_that_fit(200 * CIFAR_BITS, 1240) == 3963
    # eq 3 with the exact mixed-radix size, restricted to 3-way variables, picks c = 620:
    # 620 * log2 3 = 982.68 -> 983 bits fits; 621 * log2 3 = 984.26 -> 985 bits does not.
    c, l, cap = search_incremental(rate, 1.0, candidates=[(c, 3) for c in range(1, 2000)], bits=mixed_radix_bits)
    assert (c, l) == (620, 3) and cap == pytest.approx(982.677, abs=1e-3)
    # with eq 1 the same search only affords 491 variables (982 bits)
    assert search_incremental(rate, 1.0, candidates=[(c, 3) for c in range(1, 2000)])[:2] == (491, 3)


def test_search_incremental_by_hand():
    # rate 40 bits, rho 1, eq 1: the best c per l is floor(40 / ceil(log2 l)); capacity c log2 l:
    #   l=2: c=40, C=40   l=3/4: c=20, C=31.7/40   l=5..8: c=13, C<=39   l=9..16: c=10, C<=40
    #   l=17..32: c=8, C<=40   l=33..64: c=6, C<=36.
    # The maximum 40 is reached by (40,2), (20,4), (10,16) and (8,32) (all l**c = 2**40); ties go
    # to the smaller l, so (40, 2) -- not (20, 4).
    assert search_incremental(40) == (40, 2, 40.0)
    # rho 0.3: eq 1 bits <= 40 / 0.3 = 133.3, so l=2 gives c=133 (0.3 * 133 = 39.9 <= 40, and
    # 0.3 * 134 = 40.2 > 40); any other l loses the remainder bits (l=4: 66*2=132, l=8: 44*3=132).
    assert search_incremental(40, rho=0.3) == (133, 2, 133.0)
    # rate 12 among l in {3, 5}: l=3 -> c=6 (12 bits), C = 6 log2 3 = 9.51; l=5 -> c=4 (12 bits),
    # C = 4 log2 5 = 9.29. So (6, 3).
    c, l, cap = search_incremental(12, candidates=[(c, l) for l in (3, 5) for c in range(1, 100)])
    assert (c, l) == (6, 3) and cap == pytest.approx(6 * math.log2(3))
    # the float product rho * bits may exceed the budget by rounding only: 0.1 * 30 = 3.0000000000000004
    assert search_incremental(3.0, rho=0.1, candidates=[(30, 2)])[:2] == (30, 2)
    # the approximate solution of section 3.1, C_ve ~ gamma / (N rho)
    for rate, rho in [(100, 1.0), (983.04, 1.0), (50, 0.5)]:
        assert search_incremental(rate, rho)[2] == pytest.approx(rate / rho, rel=0.02)


def test_search_incremental_matches_brute_force():
    cands = [(c, l) for l in range(2, 20) for c in range(1, 60)]
    for rate, rho in [(17, 1.0), (33, 0.7), (61.5, 0.9)]:
        c, l, cap = search_incremental(rate, rho, candidates=cands)
        ok = [(c2 * math.log2(l2), -l2) for c2, l2 in cands if rho * sbe_bits(c2, l2) <= rate]
        assert cap == pytest.approx(max(ok)[0])


def test_search_incremental_errors():
    with pytest.raises(ValueError, match=r"smallest code .*rho\*bits\(1, 2\)"):
        search_incremental(0.5)
    with pytest.raises(ValueError, match="budget of 0.5 bits"):
        search_incremental(0.5, rho=1.0)
    with pytest.raises(ValueError, match="rho"):
        search_incremental(10, rho=1.5)
    with pytest.raises(ValueError, match="rho"):
        search_incremental(10, rho=0)
    with pytest.raises(ValueError):
        search_incremental(-1)


def test_search_total_by_hand():
    # 1000 examples, rho 1, budget 200,000 bits, model of 32 (c l)**2 bits (|theta| ~ (cl)**2,
    # section 3.2). Constraint 1000 c ceil(log2 l) + 32 c**2 l**2 <= 200,000, largest c per l:
    #   l=2: 1000c + 128c^2:  c=35 -> 191,800 (c=36 -> 201,888)  C = 35
    #   l=3: 2000c + 288c^2:  c=23 -> 198,352 (c=24 -> 213,888)  C = 23 log2 3 = 36.45
    #   l=4: 2000c + 512c^2:  c=17 -> 181,968 (c=18 -> 201,888)  C = 34
    #   l=5: 3000c + 800c^2:  c=14 -> 198,800                     C = 32.5
    #   l=8: 3000c + 2048c^2: c=9  -> 192,888                     C = 27
    # so the model cost makes 3-way variables win: (23, 3).
    fn = lambda c, l: 32 * (c * l) ** 2  # noqa: E731
    c, l, cap = search_total(200_000, 1000, 1.0, fn)
    assert (c, l) == (23, 3) and cap == pytest.approx(23 * math.log2(3))
    # same answer when every pair is tried (no bisection)
    cands = [(c, l) for l in range(2, 65) for c in range(1, 60)]
    assert search_total(200_000, 1000, 1.0, fn, candidates=cands)[:2] == (23, 3)
    # a free model reduces eq 4 to eq 3 with rate gamma / N
    assert search_total(40_000, 1000, 1.0, lambda c, l: 0)[:2] == search_incremental(40)[:2]


def test_search_total_errors():
    with pytest.raises(ValueError, match="no code fits a total budget"):
        search_total(1000, 1000, 1.0, lambda c, l: 10)
    with pytest.raises(ValueError, match="callable"):
        search_total(1000, 10, 1.0, 5)


def test_recollections_that_fit():
    assert recollections_that_fit(100, 7) == 14
    assert recollections_that_fit(100, 7, fixed_bits=30) == 10
    assert recollections_that_fit(10, 2.5) == 4
    with pytest.raises(ValueError, match="whole budget"):
        recollections_that_fit(100, 7, fixed_bits=100)


def test_param_count_plain_and_grouped():
    lin = torch.nn.Linear(3, 4)
    assert param_count(lin) == 16 and param_bits(lin) == 512

    class Grouped(torch.nn.Module):
        def __init__(self, g):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(g, 4, 3))
            self.b = torch.nn.Parameter(torch.zeros(g, 4))

    m = Grouped(5)
    assert param_count(m, groups=5) == 16 and param_bits(m, groups=5) == 512
    assert param_count(m) == 80
    with pytest.raises(ValueError, match="leading group dimension"):
        param_count(m, groups=3)


@pytest.mark.parametrize("fn", [sbe_bits, capacity_bits, mixed_radix_bits])
def test_validation(fn):
    with pytest.raises(ValueError, match="at least 2 categories"):
        fn(3, 1)
    with pytest.raises(ValueError, match="c .*must be >= 1"):
        fn(0, 2)
    with pytest.raises(ValueError, match="must be an integer"):
        fn(2.5, 2)
    with pytest.raises(ValueError, match="must be an integer"):
        fn(3, 2.0)
    with pytest.raises(ValueError, match="must be an integer"):
        fn(True, 2)


def test_other_validation():
    with pytest.raises(ValueError):
        image_bits((3, 0, 32))
    with pytest.raises(ValueError):
        image_bits(())
    with pytest.raises(ValueError):
        compression_ratio((28, 28), 0)
    with pytest.raises(ValueError):
        continuous_bits(0)
