"""Storage accounting in bits (paper section 3, equations 1-4; Tables 5 and 6).

Everything here is exact integer arithmetic where the paper's quantity is an integer:

* eq 1, simple binary encoding: ``S_sbe = c * ceil(log2 l)`` (:func:`sbe_bits`);
* eq 2, effective bottleneck capacity: ``C_ve = log2 l**c = c * log2 l`` (:func:`capacity_bits`);
* the exact size of one mixed-radix number holding all ``c`` digits, ``ceil(c * log2 l)``
  (:func:`mixed_radix_bits`): the least any lossless encoding of ``l**c`` equiprobable codes can use;
* raw images at 8 bits per value (section 3: 28x28 -> 6,272 bits; 3x32x32 -> 24,576 bits);
* continuous latents at 32 bits per float (section 3 and Table 6);
* model parameters at 32 bits each (the ``|theta|`` of eq 4);
* the searches of eq 3 (incremental constraint) and eq 4 (total constraint).

The paper's printed numbers (Tables 5 and 6, section 5.1 ratios) live in ``recollect.paper``; this
module only computes.
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import Callable, Iterable

__all__ = [
    "sbe_bits",
    "capacity_bits",
    "mixed_radix_bits",
    "image_bits",
    "compression_ratio",
    "continuous_bits",
    "param_count",
    "param_bits",
    "search_incremental",
    "search_total",
    "recollections_that_fit",
    "default_candidates",
    "DEFAULT_L_RANGE",
    "DEFAULT_C_RANGE",
]

#: Default search grid of eqs 3 and 4: categorical sizes ``l`` in 2..64 and counts ``c`` in 1..4096.
DEFAULT_L_RANGE = range(2, 65)
DEFAULT_C_RANGE = range(1, 4097)

# Relative slack when comparing a float budget with a cost: ``rho * bits`` is a float product and
# e.g. 0.1 * 30 == 3.0000000000000004 must still fit a budget of 3.0.
_REL_TOL = 1e-12


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _as_int(value, name: str, minimum: int, hint: str) -> int:
    """``value`` as a Python int >= ``minimum`` (bools and non-integral numbers are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        # strict on purpose: code sizes are integers, and a float here is nearly always a bug upstream
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__}); {hint}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}; {hint}")
    return value


def _check_cl(c, l) -> tuple[int, int]:
    """Validate a code shape: ``c >= 1`` categorical variables of ``l >= 2`` categories each."""
    c = _as_int(c, "c (number of categorical latent variables)", 1,
                "pass a positive integer number of latent variables, e.g. c=38")
    l = _as_int(l, "l (categories per latent variable)", 2,
                "a categorical variable needs at least 2 categories, e.g. l=2 for binary codes")
    return c, l


def _check_positive(value, name: str, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}; {hint}")
    return value


# --------------------------------------------------------------------------------------------
# equations 1 and 2, and the exact mixed-radix size
# --------------------------------------------------------------------------------------------
def sbe_bits(c, l) -> int:
    """Eq 1: bits of ``c`` categorical variables of ``l`` categories with simple binary encoding.

    ``S_sbe = c * ceil(log2 l)``, computed exactly as ``c * (l - 1).bit_length()``. This is the
    figure the paper uses for compression in Table 5 (``6272 / S_sbe``).
    """
    c, l = _check_cl(c, l)
    return c * (l - 1).bit_length()


def capacity_bits(c, l) -> float:
    """Eq 2: the effective bottleneck capacity ``C_ve = log2 l**c = c * log2 l`` (a real number)."""
    c, l = _check_cl(c, l)
    return c * math.log2(l)


def mixed_radix_bits(c, l) -> int:
    """``ceil(c * log2 l)`` exactly: one mixed-radix number in ``[0, l**c)`` needs this many bits.

    Computed with big integers as ``(l**c - 1).bit_length()`` so there is no rounding error (the
    float ``c * log2 l`` can land on the wrong side of an integer). Equals :func:`sbe_bits` when
    ``l`` is a power of two; e.g. ``(620, 3)`` costs 983 bits here against 1,240 with eq 1.
    """
    c, l = _check_cl(c, l)
    return (l ** c - 1).bit_length()


# --------------------------------------------------------------------------------------------
# images, continuous latents, parameters
# --------------------------------------------------------------------------------------------
def image_bits(shape, bits_per_value: int = 8) -> int:
    """Bits of one raw image of ``shape`` at ``bits_per_value`` bits per value (section 3).

    ``image_bits((28, 28)) == 6272`` (MNIST, Omniglot: 8 x 1 x 28 x 28) and
    ``image_bits((3, 32, 32)) == 24576`` (CIFAR: 8 x 3 x 32 x 32). Any shape is accepted.
    """
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of positive integers such as (3, 32, 32), got {shape!r}") from None
    if not dims:
        raise ValueError("shape is empty; pass the image shape, e.g. (28, 28) or (3, 32, 32)")
    hint = "pass the image shape as positive integers, e.g. (3, 32, 32)"
    n = 1
    for d in dims:
        n *= _as_int(d, "every image dimension", 1, hint)
    bpv = _as_int(bits_per_value, "bits_per_value", 1, "use 8 for 8-bit images")
    return n * bpv


def compression_ratio(image_shape_or_bits, code_bits) -> float:
    """Compression = bits of the raw image / bits of its stored code (Table 5, Table 6, section 5.1).

    ``image_shape_or_bits`` is either an image shape (8 bits per value, see :func:`image_bits`) or
    an integer number of bits. ``code_bits`` may be fractional (e.g. an average rate).
    """
    if isinstance(image_shape_or_bits, numbers.Integral) and not isinstance(image_shape_or_bits, bool):
        img = _as_int(image_shape_or_bits, "image bits", 1, "pass the image's bits (e.g. 6272) or its shape")
    else:
        img = image_bits(image_shape_or_bits)
    code_bits = _check_positive(code_bits, "code_bits", "pass the bits of one stored code, e.g. sbe_bits(c, l)")
    return img / code_bits


def continuous_bits(n_floats, bits: int = 32) -> int:
    """Bits of a continuous latent of ``n_floats`` floats at ``bits`` bits each (section 3: 32h bits).

    Table 6's continuous autoencoders have latents of ``4h`` floats, i.e. ``128h`` bits, hence a
    compression of ``6272 / (128 h) = 49 / h`` on MNIST.
    """
    n = _as_int(n_floats, "n_floats", 1, "pass the number of floats in the latent, e.g. 4 * h")
    b = _as_int(bits, "bits", 1, "use 32 for float32")
    return n * b


def param_count(model, groups: int = 1) -> int:
    """Number of parameters ``|theta|`` of ``model`` (eq 4), per model of a group.

    For a grouped model (``recollect.grouped``: every parameter has a leading dimension ``G``) pass
    ``groups=G``; the count of one of the ``G`` fused models (``total // G``) is returned.
    """
    g = _as_int(groups, "groups", 1, "pass the number of fused models G (1 for a plain model)")
    total = 0
    for name, p in model.named_parameters():
        if g > 1 and (p.dim() == 0 or p.shape[0] != g):
            raise ValueError(
                f"parameter {name!r} of shape {tuple(p.shape)} has no leading group dimension {g}; "
                f"pass the model's real number of groups (or groups=1 for a plain model)")
        total += p.numel()
    if total % g:
        raise ValueError(f"{total} parameters do not split into {g} equal groups; check groups=")
    return total // g


def param_bits(model, groups: int = 1, bits_per_param: int = 32) -> int:
    """Bits of the parameters of ``model`` at 32 bits each (the ``|theta|`` term of eq 4)."""
    b = _as_int(bits_per_param, "bits_per_param", 1, "use 32 for float32 parameters")
    return b * param_count(model, groups=groups)


# --------------------------------------------------------------------------------------------
# equations 3 and 4
# --------------------------------------------------------------------------------------------
def default_candidates() -> Iterable[tuple[int, int]]:
    """All ``(c, l)`` of the default grid: ``l`` in 2..64, ``c`` in 1..4096."""
    return ((c, l) for l in DEFAULT_L_RANGE for c in DEFAULT_C_RANGE)


def _fits(cost: float, budget: float) -> bool:
    return cost <= budget + _REL_TOL * max(1.0, abs(budget))


def _better(cand: tuple[int, int, float], best: tuple[int, int, float] | None) -> bool:
    """Larger capacity wins; equal capacity (``l**c`` equal exactly) goes to the smaller ``l``."""
    if best is None:
        return True
    c, l, cap = cand
    bc, bl, bcap = best
    if abs(cap - bcap) > 1e-9 * max(1.0, bcap):
        return cap > bcap
    # floats too close to decide: compare l**c exactly with big integers
    a, b = l ** c, bl ** bc
    if a != b:
        return a > b
    return l < bl


def _search(feasible: Callable[[int, int], bool], candidates) -> tuple[int, int, float] | None:
    best = None
    if candidates is None:
        # Costs are nondecreasing in c for every l (eq 1, mixed radix, chunked packing, and parameter
        # counts that grow with c), so the largest feasible c per l is found by bisection.
        c_lo, c_hi = DEFAULT_C_RANGE.start, DEFAULT_C_RANGE.stop - 1
        for l in DEFAULT_L_RANGE:
            if not feasible(c_lo, l):
                continue
            lo, hi = c_lo, c_hi  # invariant: feasible(lo), answer in [lo, hi]
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if feasible(mid, l):
                    lo = mid
                else:
                    hi = mid - 1
            cand = (lo, l, capacity_bits(lo, l))
            if _better(cand, best):
                best = cand
        return best
    for pair in candidates:
        try:
            c, l = pair
        except (TypeError, ValueError):
            raise ValueError(f"candidates must be (c, l) pairs, got {pair!r}") from None
        c, l = _check_cl(c, l)
        if feasible(c, l):
            cand = (c, l, capacity_bits(c, l))
            if _better(cand, best):
                best = cand
    return best


def search_incremental(rate_bits, rho: float = 1.0, candidates=None,
                       bits: Callable[[int, int], int] = sbe_bits) -> tuple[int, int, float]:
    """Eq 3 (section 3.1): maximize ``C_ve`` subject to ``rho * S(c, l) <= gamma / N``.

    ``rate_bits`` is the average storage rate ``gamma / N`` in bits per incoming example, ``rho`` the
    probability that an incoming example is stored, and ``bits`` the per-code size ``S`` (eq 1,
    :func:`sbe_bits`, by default; :func:`mixed_radix_bits` or ``recollect.codes.packed_bits`` for
    tighter encodings). ``candidates`` is an iterable of ``(c, l)`` pairs, all tried; by default the
    grid ``l`` in 2..64, ``c`` in 1..4096, searched per ``l`` by bisection on ``c`` (``bits`` must
    then be nondecreasing in ``c``, as all the encodings above are).

    Returns ``(c, l, capacity)`` with the largest capacity ``c * log2 l``; ties (equal ``l**c``)
    go to the smaller ``l``. The paper's approximate solution is ``C_ve ~ gamma / (N rho)``.
    Raises ``ValueError`` when no candidate fits the budget.
    """
    rate = _check_positive(rate_bits, "rate_bits (gamma / N)", "pass the storage budget in bits per example")
    rho = _check_positive(rho, "rho (probability of storing an example)", "use 0 < rho <= 1")
    if rho > 1:
        raise ValueError(f"rho is a probability and must be <= 1, got {rho}")
    best = _search(lambda c, l: _fits(rho * bits(c, l), rate), candidates)
    if best is None:
        smallest = rho * bits(1, 2)
        raise ValueError(
            f"no code fits an incremental budget of {rate:g} bits per example with rho={rho:g} among the "
            f"candidates: the smallest code (c=1, l=2) alone costs rho*bits(1, 2) = {smallest:g} bits. "
            f"Raise rate_bits (gamma / N) to at least {smallest:g}, lower rho, or widen the candidates.")
    return best


def search_total(gamma_bits, n_examples, rho, param_bits_fn: Callable[[int, int], float],
                 candidates=None, bits: Callable[[int, int], int] = sbe_bits) -> tuple[int, int, float]:
    """Eq 4 (section 3.2): maximize ``C_ve`` under a total storage budget that includes the model.

    The paper prints the constraint as ``rho * S_sbe + |theta|(c, l) <= gamma / N``, which adds a
    one-off parameter count to a per-example rate. Here it is implemented in total bits, which is
    what the section means (the whole footprint of buffer plus autoencoder must fit ``gamma``)::

        n_examples * rho * bits(c, l) + param_bits_fn(c, l) <= gamma_bits

    ``param_bits_fn(c, l)`` returns the bits of the compression model for that code shape (e.g.
    ``32 * |theta|``; the paper notes ``|theta|(c, l)`` grows like ``(c l)**2`` for dense layers).
    ``candidates`` and ``bits`` are as in :func:`search_incremental` (on the default grid the total
    cost must be nondecreasing in ``c`` for each ``l``). Returns ``(c, l, capacity)``; raises
    ``ValueError`` when nothing fits.
    """
    gamma = _check_positive(gamma_bits, "gamma_bits (total storage budget)", "pass the total budget in bits")
    n = _as_int(n_examples, "n_examples (N)", 1, "pass the number of incoming examples")
    rho = _check_positive(rho, "rho (probability of storing an example)", "use 0 < rho <= 1")
    if rho > 1:
        raise ValueError(f"rho is a probability and must be <= 1, got {rho}")
    if not callable(param_bits_fn):
        raise ValueError("param_bits_fn must be a callable (c, l) -> bits of the model's parameters")

    def feasible(c, l):
        return _fits(n * rho * bits(c, l) + param_bits_fn(c, l), gamma)

    best = _search(feasible, candidates)
    if best is None:
        smallest = n * rho * bits(1, 2) + param_bits_fn(1, 2)
        raise ValueError(
            f"no code fits a total budget of {gamma:g} bits for N={n} examples with rho={rho:g}: the smallest "
            f"code (c=1, l=2) already costs N*rho*bits(1, 2) + param_bits_fn(1, 2) = {smallest:g} bits. "
            f"Raise gamma_bits, lower rho, use a smaller model, or widen the candidates.")
    return best


def recollections_that_fit(budget_bits, bits_per_code, fixed_bits=0) -> int:
    """How many codes of ``bits_per_code`` bits fit ``budget_bits`` after ``fixed_bits`` (section 5.2).

    ``floor((budget_bits - fixed_bits) / bits_per_code)``, in exact rational arithmetic. E.g. the
    budget of 200 CIFAR images (``200 * 24576`` bits) holds 5,000 codes of 983 bits.
    Raises ``ValueError`` when ``fixed_bits >= budget_bits`` (nothing is left for codes).
    """
    budget = _check_positive(budget_bits, "budget_bits", "pass the storage budget in bits")
    per = _check_positive(bits_per_code, "bits_per_code", "pass the bits of one stored code")
    if isinstance(fixed_bits, bool) or not isinstance(fixed_bits, numbers.Real) or fixed_bits < 0:
        raise ValueError(f"fixed_bits must be a number >= 0, got {fixed_bits!r}")
    if fixed_bits >= budget:
        raise ValueError(
            f"the fixed cost of {fixed_bits:g} bits (e.g. model parameters) uses the whole budget of "
            f"{budget:g} bits, leaving nothing for recollections; raise the budget or shrink the model")
    return math.floor((Fraction(budget) - Fraction(fixed_bits)) / Fraction(per))
