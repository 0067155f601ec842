"""Packing categorical latent codes into bits (paper section 3: eq 1 and the mixed-radix bound).

A code is ``c`` categorical variables with values in ``[0, l)`` (section 4.2). Eq 1 stores each
variable in ``ceil(log2 l)`` bits; the least possible is one mixed-radix number of
``ceil(c log2 l)`` bits (``recollect.accounting.mixed_radix_bits``). A single mixed-radix number of
hundreds of digits is big-integer work, so codes are packed in *chunks*: a chunk of ``k`` variables
``d_0 .. d_{k-1}`` is the integer ``sum_i d_i l**i < l**k`` and takes ``(l**k - 1).bit_length()``
bits. ``k`` is limited so that ``l**k <= 2**62`` (the value fits an int64, so all the arithmetic is
vectorized torch on any device). :func:`packing_plan` splits ``c`` into chunk sizes that minimize the
total bits, by dynamic programming; for ``l = 2**m`` the result is exactly ``c * m`` bits (eq 1), and
in general it is less than one bit per chunk above ``ceil(c log2 l)``.

Bit tensors are ``torch.uint8`` of 0/1 values, ``(..., B)``: chunk after chunk in plan order, each
chunk least significant bit first. Byte storage is little-endian within a byte (bit ``j`` of byte
``i`` is bit ``8 i + j``). :func:`read_records` / :func:`write_records` gather and scatter fixed-width
records at arbitrary bit offsets of a flat byte store, so a buffer of ``R`` codes of ``B`` bits costs
exactly ``R * B`` bits plus less than one byte of padding (section 4.3's recollection buffer).
"""
from __future__ import annotations

import functools
import numbers

import torch

from .accounting import _as_int

__all__ = [
    "MAX_CHUNK_VALUE",
    "max_chunk",
    "chunk_bits",
    "packing_plan",
    "packed_bits",
    "check_codes",
    "pack",
    "unpack",
    "bits_to_bytes",
    "bytes_to_bits",
    "record_bytes",
    "read_records",
    "write_records",
    "read_span",
    "write_span",
    "read_rows",
    "write_row_where",
]

#: A chunk of ``k`` variables is packed only when ``l**k <= MAX_CHUNK_VALUE`` (fits an int64).
MAX_CHUNK_VALUE = 2 ** 62

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# Records per step of read_records / write_records are limited so that the temporary int64 index
# tensors stay near this many elements (about 32 MiB).
_MAX_TEMP_BITS = 2 ** 22


@functools.lru_cache(maxsize=None)
def _const(kind: str, a: int, b: int, device: torch.device) -> torch.Tensor:
    """Small constant tensors of the packing arithmetic, made once per device and reused.

    Building them from Python lists on every call would copy host memory to the device on each
    step (and a captured CUDA graph must not do that): ``powers`` ``[a**0 .. a**(b-1)]``,
    ``shifts`` ``[0 .. a-1]``, ``weights`` ``[1, 2, 4, .., 128]`` (uint8), ``bitshifts``
    ``[0 .. 7]`` (uint8). They are read-only."""
    if kind == "powers":
        return torch.tensor([a ** i for i in range(b)], dtype=torch.int64, device=device)
    if kind == "shifts":
        return torch.arange(a, dtype=torch.int64, device=device)
    if kind == "weights":
        return torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)
    if kind == "bitshifts":
        return torch.arange(8, dtype=torch.uint8, device=device)
    raise ValueError(f"unknown constant {kind!r}")


# --------------------------------------------------------------------------------------------
# plans: how c variables are split into chunks
# --------------------------------------------------------------------------------------------
def _check_l(l) -> int:
    l = _as_int(l, "l (categories per latent variable)", 2,
                "a categorical variable needs at least 2 categories, e.g. l=2 for binary codes")
    if l > MAX_CHUNK_VALUE:
        raise ValueError(f"l={l} is too large to pack: at most 2**62 categories per variable are supported")
    return l


def _check_c(c) -> int:
    return _as_int(c, "c (number of categorical latent variables)", 1,
                   "pass a positive integer number of latent variables, e.g. c=38")


def max_chunk(l) -> int:
    """The largest chunk size ``k`` with ``l**k <= 2**62`` (62 for ``l = 2``, 39 for ``l = 3``)."""
    l = _check_l(l)
    k, v = 0, 1
    while v * l <= MAX_CHUNK_VALUE:
        v *= l
        k += 1
    return k


def chunk_bits(k, l) -> int:
    """Bits of one chunk of ``k`` variables: ``(l**k - 1).bit_length() = ceil(k log2 l)``."""
    l = _check_l(l)
    k = _as_int(k, "chunk size k", 1, "a chunk holds at least one variable")
    if l ** k > MAX_CHUNK_VALUE:
        raise ValueError(f"a chunk of {k} variables with l={l} exceeds 2**62; use k <= {max_chunk(l)}")
    return (l ** k - 1).bit_length()


@functools.lru_cache(maxsize=4096)
def _plan(c: int, l: int) -> tuple[int, ...]:
    kmax = max_chunk(l)
    cb = [0] + [(l ** k - 1).bit_length() for k in range(1, kmax + 1)]
    m = cb[1]
    if all(cb[k] == k * m for k in range(1, kmax + 1)):
        # l is a power of two: every chunk is exact (k * log2 l bits); use the largest chunks.
        q, r = divmod(c, kmax)
        return (kmax,) * q + ((r,) if r else ())
    # best[n] = (total bits, number of chunks) of the best split of n variables; minimize bits,
    # then the number of chunks (fewer tensor operations), preferring larger chunks on ties.
    best = [(0, 0)] + [None] * c
    choice = [0] * (c + 1)
    for n in range(1, c + 1):
        b = None
        for k in range(min(kmax, n), 0, -1):
            pb, pn = best[n - k]
            cand = (pb + cb[k], pn + 1)
            if b is None or cand < b:
                b, choice[n] = cand, k
        best[n] = b
    sizes, n = [], c
    while n:
        sizes.append(choice[n])
        n -= choice[n]
    return tuple(sorted(sizes, reverse=True))


def packing_plan(c, l) -> list[int]:
    """Chunk sizes (summing to ``c``, largest first) that minimize the total packed bits.

    Dynamic programming over ``n = 1..c`` and chunk sizes ``k = 1..max_chunk(l)``:
    ``best(n) = min_k best(n - k) + chunk_bits(k, l)``. Ties are broken towards fewer chunks.
    """
    return list(_plan(_check_c(c), _check_l(l)))


def packed_bits(c, l) -> int:
    """Bits of one packed code of ``c`` variables with ``l`` categories (sum of the chunk bits).

    Equals ``c * log2 l`` when ``l`` is a power of two (eq 1); otherwise lies between
    ``ceil(c log2 l)`` and that plus the number of chunks.
    """
    l = _check_l(l)
    return sum((l ** k - 1).bit_length() for k in _plan(_check_c(c), l))


def _check_plan(plan, l: int, c: int | None = None) -> tuple[int, ...]:
    try:
        plan = tuple(int(k) for k in plan)
    except TypeError:
        raise ValueError(f"plan must be a list of chunk sizes, e.g. packing_plan(c, l); got {plan!r}") from None
    if not plan:
        raise ValueError("plan is empty; use packing_plan(c, l)")
    kmax = max_chunk(l)
    for k in plan:
        if not 1 <= k <= kmax:
            raise ValueError(f"chunk size {k} in plan is outside 1..{kmax} for l={l}; use packing_plan(c, l)")
    if c is not None and sum(plan) != c:
        raise ValueError(f"plan sums to {sum(plan)} variables but the codes have c={c}; use packing_plan({c}, {l})")
    return plan


def _runs(plan: tuple[int, ...]):
    """Consecutive runs of equal chunk sizes: (first variable, chunk size k, number of chunks m)."""
    out, start, i = [], 0, 0
    while i < len(plan):
        j = i
        while j < len(plan) and plan[j] == plan[i]:
            j += 1
        out.append((start, plan[i], j - i))
        start += plan[i] * (j - i)
        i = j
    return out


# --------------------------------------------------------------------------------------------
# codes <-> bits
# --------------------------------------------------------------------------------------------
def check_codes(codes: torch.Tensor, l, c=None) -> None:
    """Raise ``ValueError`` unless ``codes`` is an integer tensor ``(..., c)`` with values in ``[0, l)``."""
    l = _check_l(l)
    if not isinstance(codes, torch.Tensor):
        raise ValueError(f"codes must be a torch integer tensor of shape (..., c), got {type(codes).__name__}")
    if codes.dtype not in _INT_DTYPES:
        raise ValueError(f"codes must have an integer dtype (e.g. torch.int64), got {codes.dtype}; "
                         f"take the argmax of the one-hot/Gumbel-softmax sample to get category indices")
    if codes.dim() < 1:
        raise ValueError("codes must have at least one dimension (..., c)")
    if c is not None and codes.shape[-1] != c:
        raise ValueError(f"codes have {codes.shape[-1]} variables in the last dimension, expected c={c}")
    if codes.numel() == 0:
        return
    bad = (codes < 0) | (codes >= l) if codes.dtype != torch.uint8 else (codes >= l)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"code value {int(codes[idx])} at index {idx} is outside the valid range [0, {l}) "
                         f"for l={l} categories; codes must be category indices 0..{l - 1}")


def pack(codes: torch.Tensor, l, plan=None) -> torch.Tensor:
    """Pack integer codes ``(..., c)`` in ``[0, l)`` into a uint8 bit tensor ``(..., B)`` of 0/1.

    ``B = packed_bits(c, l)`` for the default ``plan = packing_plan(c, l)``. Each chunk of ``k``
    variables becomes the integer ``sum_i d_i l**i`` written least significant bit first.
    Vectorized over all leading dimensions (loops only over runs of equal chunk sizes).
    """
    l = _check_l(l)
    check_codes(codes, l)
    c = codes.shape[-1]
    plan = _check_plan(packing_plan(c, l) if plan is None else plan, l, c)
    return _pack(codes.long(), l, plan)


def _pow2(l: int) -> int:
    """``m`` when ``l == 2**m``, else 0."""
    return l.bit_length() - 1 if l & (l - 1) == 0 else 0


def _pack(codes: torch.Tensor, l: int, plan: tuple[int, ...]) -> torch.Tensor:
    lead = codes.shape[:-1]
    dev = codes.device
    m2 = _pow2(l)
    if m2:
        # l = 2**m: every chunk is exact, and the chunked layout is each variable's m bits in turn
        shifts = _const("shifts", m2, 0, dev)
        return ((codes.unsqueeze(-1) >> shifts) & 1).reshape(*lead, codes.shape[-1] * m2).to(torch.uint8)
    return _pack_chunks(codes, l, plan)


def _pack_chunks(codes: torch.Tensor, l: int, plan: tuple[int, ...]) -> torch.Tensor:
    """The general chunked mixed-radix packing (any ``l``)."""
    lead = codes.shape[:-1]
    dev = codes.device
    parts = []
    for start, k, m in _runs(plan):
        b = (l ** k - 1).bit_length()
        x = codes[..., start:start + k * m].reshape(*lead, m, k)
        powers = _const("powers", l, k, dev)
        value = (x * powers).sum(-1)  # < l**k <= 2**62: no int64 overflow
        shifts = _const("shifts", b, 0, dev)
        bits = (value.unsqueeze(-1) >> shifts) & 1
        parts.append(bits.reshape(*lead, m * b).to(torch.uint8))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def unpack(bits: torch.Tensor, l, plan) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 bits ``(..., B)`` -> int64 codes ``(..., c)`` in ``[0, l)``."""
    l = _check_l(l)
    plan = _check_plan(plan, l)
    total = sum((l ** k - 1).bit_length() for k in plan)
    if not isinstance(bits, torch.Tensor) or bits.dim() < 1 or bits.shape[-1] != total:
        shape = tuple(bits.shape) if isinstance(bits, torch.Tensor) else type(bits).__name__
        raise ValueError(f"bits must be a tensor (..., {total}) for this plan (l={l}), got {shape}")
    if bits.dtype not in _INT_DTYPES and bits.dtype != torch.bool:
        raise ValueError(f"bits must be an integer tensor of 0/1 values, got {bits.dtype}")
    if bits.numel() and bool(((bits.long() < 0) | (bits.long() > 1)).any()):
        raise ValueError("bits must hold only 0 and 1 (use bytes_to_bits to expand packed bytes)")
    return _unpack(bits, l, plan)


def _unpack(bits: torch.Tensor, l: int, plan: tuple[int, ...], check: bool = True) -> torch.Tensor:
    lead = bits.shape[:-1]
    dev = bits.device
    m2 = _pow2(l)
    if m2:
        shifts = _const("shifts", m2, 0, dev)
        x = bits.reshape(*lead, bits.shape[-1] // m2, m2).long()
        return (x << shifts).sum(-1)
    return _unpack_chunks(bits, l, plan, check)


def _unpack_chunks(bits: torch.Tensor, l: int, plan: tuple[int, ...], check: bool = True) -> torch.Tensor:
    """The general inverse of :func:`_pack_chunks`."""
    lead = bits.shape[:-1]
    dev = bits.device
    parts, pos = [], 0
    for _, k, m in _runs(plan):
        b = (l ** k - 1).bit_length()
        x = bits[..., pos:pos + m * b].reshape(*lead, m, b).long()
        pos += m * b
        shifts = _const("shifts", b, 0, dev)
        value = (x << shifts).sum(-1)  # b <= 62 bits
        if check and value.numel() and bool((value >= l ** k).any()):
            raise ValueError(f"bits do not encode a valid code: a chunk of {k} variables holds a value >= {l}**{k}; "
                             f"were they packed with the same l and plan?")
        powers = _const("powers", l, k, dev)
        digits = torch.div(value.unsqueeze(-1), powers, rounding_mode="floor") % l
        parts.append(digits.reshape(*lead, m * k))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


# --------------------------------------------------------------------------------------------
# bits <-> bytes, and fixed-width records inside a byte store
# --------------------------------------------------------------------------------------------
def bits_to_bytes(bits: torch.Tensor) -> torch.Tensor:
    """Pack 0/1 bits ``(..., n)`` into uint8 bytes ``(..., ceil(n / 8))``, little-endian in a byte.

    Bit ``8 i + j`` becomes bit ``j`` (value ``2**j``) of byte ``i``; the last byte is zero-padded.
    """
    if not isinstance(bits, torch.Tensor) or bits.dim() < 1:
        raise ValueError("bits must be a tensor of shape (..., n)")
    n = bits.shape[-1]
    nb = (n + 7) // 8
    x = bits.to(torch.uint8)
    if nb * 8 != n:
        pad = torch.zeros(*bits.shape[:-1], nb * 8 - n, dtype=torch.uint8, device=bits.device)
        x = torch.cat([x, pad], dim=-1)
    weights = _const("weights", 0, 0, bits.device)
    return (x.reshape(*bits.shape[:-1], nb, 8) * weights).sum(-1).to(torch.uint8)


def bytes_to_bits(data: torch.Tensor, n=None) -> torch.Tensor:
    """Inverse of :func:`bits_to_bytes`: uint8 ``(..., nb)`` -> 0/1 uint8 ``(..., n)`` (``n <= 8 nb``)."""
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() < 1:
        raise ValueError("data must be a uint8 tensor of shape (..., nbytes)")
    nb = data.shape[-1]
    n = 8 * nb if n is None else _as_int(n, "n (number of bits)", 0, "pass how many bits to keep")
    if n > 8 * nb:
        raise ValueError(f"asked for {n} bits but {nb} bytes hold only {8 * nb}")
    shifts = _const("bitshifts", 0, 0, data.device)
    bits = (data.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*data.shape[:-1], nb * 8)[..., :n]


def record_bytes(n_records, width) -> int:
    """Bytes of a store holding ``n_records`` records of ``width`` bits: ``ceil(n_records * width / 8)``."""
    n = _as_int(n_records, "n_records", 0, "pass the number of records (the buffer capacity)")
    w = _as_int(width, "width", 1, "pass the bits per record, e.g. packed_bits(c, l)")
    return (n * w + 7) // 8


def _check_store(store, rows, width):
    if not isinstance(store, torch.Tensor) or store.dtype != torch.uint8 or store.dim() != 2:
        raise ValueError("store must be a uint8 tensor (G, nbytes)")
    if not store.is_contiguous():
        raise ValueError("store must be contiguous (records are addressed in its flat memory); use .contiguous()")
    width = _as_int(width, "width", 1, "pass the bits per record, e.g. packed_bits(c, l)")
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[0] != store.shape[0]:
        raise ValueError(f"rows must be an integer tensor (G, n) with G={store.shape[0]} matching the store, "
                         f"got {tuple(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__}")
    if rows.dtype not in _INT_DTYPES:
        raise ValueError(f"rows must be an integer tensor, got {rows.dtype}")
    n_rec = store.shape[1] * 8 // width
    if rows.numel() and (bool((rows < 0).any()) or bool((rows >= n_rec).any())):
        raise ValueError(f"rows must lie in [0, {n_rec}): the store holds {n_rec} records of {width} bits; "
                         f"got values in [{int(rows.min())}, {int(rows.max())}]")
    return width


def _window(width: int) -> int:
    """Bytes spanned by a record of ``width`` bits starting at any bit offset 0..7."""
    return (width + 7 + 7) // 8


def _read_flat(store: torch.Tensor, g: torch.Tensor, r: torch.Tensor, width: int) -> torch.Tensor:
    """Records ``r`` of groups ``g`` (both (M,) int64) -> bits (M, width) uint8."""
    G, nbytes = store.shape
    dev = store.device
    flat = store.reshape(-1)
    W = _window(width)
    out = torch.empty(g.shape[0], width, dtype=torch.uint8, device=dev)
    step = max(1, _MAX_TEMP_BITS // (8 * W))
    ar_w = torch.arange(W, dtype=torch.int64, device=dev)
    ar_b = torch.arange(width, dtype=torch.int64, device=dev)
    for s in range(0, g.shape[0], step):
        gs, rs = g[s:s + step], r[s:s + step]
        bitpos = rs * width
        idx = (gs * nbytes + (bitpos >> 3)).unsqueeze(1) + ar_w
        window = flat[idx.clamp_(max=G * nbytes - 1)]  # bytes past the record are read but unused
        wbits = bytes_to_bits(window)  # (m, 8W)
        out[s:s + step] = torch.gather(wbits, 1, (bitpos & 7).unsqueeze(1) + ar_b)
    return out


def _write_flat(store: torch.Tensor, g: torch.Tensor, r: torch.Tensor, bits: torch.Tensor, width: int,
                distinct_bytes: bool) -> None:
    """Write bits (M, width) to records ``r`` of groups ``g``, in place.

    Records whose bytes overlap (neighbouring rows of one group share a boundary byte) are written in
    separate passes (by ``row mod P``) so that every pass is a read-modify-write of disjoint bytes.
    """
    G, nbytes = store.shape
    dev = store.device
    flat = store.view(-1)
    W = _window(width)
    n_pass = 1 if distinct_bytes else 1 + (7 + width - 1) // width  # rows >= P apart share no byte
    step = max(1, _MAX_TEMP_BITS // (8 * W))
    ar_w = torch.arange(W, dtype=torch.int64, device=dev)
    ar_b = torch.arange(width, dtype=torch.int64, device=dev)
    for s in range(0, g.shape[0], step):
        gs, rs, bs = g[s:s + step], r[s:s + step], bits[s:s + step]
        for p in range(n_pass):
            if n_pass > 1:
                sel = (rs % n_pass == p).nonzero().squeeze(1)
                if sel.numel() == 0:
                    continue
                gp, rp, bp = gs[sel], rs[sel], bs[sel]
            else:
                gp, rp, bp = gs, rs, bs
            bitpos = rp * width
            off = bitpos & 7
            idx = (gp * nbytes + (bitpos >> 3)).unsqueeze(1) + ar_w  # (m, W)
            window = flat[idx.clamp(max=G * nbytes - 1)]
            wbits = bytes_to_bits(window)
            wbits.scatter_(1, off.unsqueeze(1) + ar_b, bp.to(torch.uint8))
            new = bits_to_bytes(wbits)
            touched = ar_w.unsqueeze(0) <= ((off + width - 1) >> 3).unsqueeze(1)  # bytes of this record
            flat[idx[touched]] = new[touched]


def read_records(store: torch.Tensor, rows: torch.Tensor, width) -> torch.Tensor:
    """Gather records: ``store`` uint8 ``(G, nbytes)``, ``rows`` ``(G, n)`` -> bits ``(G, n, width)``.

    Record ``r`` of a group occupies bits ``[r * width, (r + 1) * width)`` of that group's store
    (little-endian within bytes, as :func:`bytes_to_bits`).
    """
    width = _check_store(store, rows, width)
    G, n = rows.shape
    g = torch.arange(G, device=store.device).repeat_interleave(n)
    return _read_flat(store, g, rows.reshape(-1).long(), width).reshape(G, n, width)


def write_records(store: torch.Tensor, rows: torch.Tensor, bits: torch.Tensor, mask=None) -> None:
    """Scatter records in place: ``bits`` ``(G, n, width)`` go to ``rows`` ``(G, n)`` of ``store``.

    Rows must be distinct within a group in one call. Neighbouring records are never clobbered:
    bytes shared with a neighbour are read, modified in the record's bits only, and written back.
    ``mask`` (optional bool ``(G, n)``): only records where it is True are written.
    """
    if not isinstance(bits, torch.Tensor) or bits.dim() != 3:
        raise ValueError("bits must be a tensor (G, n, width) of 0/1 values")
    width = _check_store(store, rows, bits.shape[2])
    G, n = rows.shape
    if tuple(bits.shape[:2]) != (G, n):
        raise ValueError(f"bits have shape {tuple(bits.shape)} but rows are {(G, n)}; expected {(G, n, width)}")
    rows = rows.long()
    if n > 1 and bool((rows.sort(dim=1).values.diff(dim=1) == 0).any()):
        raise ValueError("rows must be distinct within each group in one write_records call")
    g = torch.arange(G, device=store.device).repeat_interleave(n)
    r, b = rows.reshape(-1), bits.reshape(G * n, width)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (G, n):
            raise ValueError(f"mask must be a bool tensor {(G, n)}")
        keep = mask.reshape(-1).nonzero().squeeze(1)
        g, r, b = g[keep], r[keep], b[keep]
    _write_flat(store, g, r, b, width, distinct_bytes=(n == 1))


def _check_span(store, start_bit, nbits) -> tuple[int, int]:
    if not isinstance(store, torch.Tensor) or store.dtype != torch.uint8 or store.dim() != 2:
        raise ValueError("store must be a uint8 tensor (G, nbytes)")
    start = _as_int(start_bit, "start_bit", 0, "pass the first bit of the span, e.g. row * width")
    n = _as_int(nbits, "number of bits", 0, "pass a non-negative span length")
    if start + n > 8 * store.shape[1]:
        raise ValueError(f"bits [{start}, {start + n}) run past the end of a store of {8 * store.shape[1]} bits")
    return start, n


def read_span(store: torch.Tensor, start_bit, nbits) -> torch.Tensor:
    """Bits ``[start_bit, start_bit + nbits)`` of every group's store: uint8 ``(G, nbits)``.

    The fast path for contiguous records (rows ``a .. a + n`` are the span ``[a w, (a + n) w)``).
    """
    start, n = _check_span(store, start_bit, nbits)
    if n == 0:
        return torch.zeros(store.shape[0], 0, dtype=torch.uint8, device=store.device)
    b0, b1 = start >> 3, (start + n - 1) >> 3
    return bytes_to_bits(store[:, b0:b1 + 1])[:, start & 7:(start & 7) + n]


def write_span(store: torch.Tensor, start_bit, bits: torch.Tensor) -> None:
    """Write 0/1 ``bits`` ``(G, nbits)`` at bits ``[start_bit, start_bit + nbits)`` of each group, in place.

    Bits of the two boundary bytes outside the span are preserved.
    """
    if not isinstance(bits, torch.Tensor) or bits.dim() != 2 or bits.shape[0] != store.shape[0]:
        raise ValueError(f"bits must be a tensor (G, nbits) with G={store.shape[0]}")
    start, n = _check_span(store, start_bit, bits.shape[1])
    if n == 0:
        return
    b0, b1 = start >> 3, (start + n - 1) >> 3
    off = start & 7
    region = bytes_to_bits(store[:, b0:b1 + 1])
    region[:, off:off + n] = bits.to(torch.uint8)
    store[:, b0:b1 + 1] = bits_to_bytes(region)


# --------------------------------------------------------------------------------------------
# the step's fast path: records known to be valid, no host synchronisation
# --------------------------------------------------------------------------------------------
def _windows(store: torch.Tensor, rows: torch.Tensor, width: int):
    """Byte windows that hold records ``rows`` ``(G, n)`` of each group, kept inside the group's row:
    ``(flat indices (G, n, W), bit offset of each record in its window (G, n))``."""
    G, nbytes = store.shape
    W = min(_window(width), nbytes)
    bitpos = rows * width
    start = (bitpos >> 3).clamp(max=nbytes - W)  # a window that would run past the row is moved left
    off = bitpos - start * 8
    base = torch.arange(G, dtype=torch.int64, device=store.device).view(G, 1) * nbytes
    idx = (base + start).unsqueeze(-1) + torch.arange(W, dtype=torch.int64, device=store.device)
    return idx, off


def read_rows(store: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """Records ``rows`` ``(G, n)`` of each group of a contiguous ``store`` ``(G, nbytes)``: bits
    ``(G, n, width)``, with no validation and no host synchronisation (the fast read of a
    recollection buffer, section 4.3: rows drawn by the buffer itself are valid by construction;
    :func:`read_records` checks its arguments)."""
    idx, off = _windows(store, rows, width)
    wbits = bytes_to_bits(store.view(-1)[idx])  # (G, n, 8W)
    pos = off.unsqueeze(-1) + torch.arange(width, dtype=torch.int64, device=store.device)
    return torch.gather(wbits, 2, pos)


def write_row_where(store: torch.Tensor, rows: torch.Tensor, bits: torch.Tensor, mask: torch.Tensor) -> None:
    """Write one record per group, where ``mask`` says so, in place, with no host synchronisation.

    ``store`` uint8 ``(G, nbytes)`` (contiguous), ``rows`` int64 ``(G,)`` valid record indices,
    ``bits`` 0/1 ``(G, width)``, ``mask`` bool ``(G,)``. Each group's record is a read-modify-write
    of the bytes that hold it (neighbours keep their bits); where ``mask`` is False the bytes are
    written back unchanged. The reservoir step of section 5.2 (a decision per group, made on the
    device) uses it; :func:`write_records` is the checked, general form."""
    width = bits.shape[-1]
    idx, off = _windows(store, rows.view(-1, 1), width)  # (G, 1, W), (G, 1)
    idx, off = idx[:, 0], off[:, 0]
    flat = store.view(-1)
    old = bytes_to_bits(flat[idx])  # (G, 8W)
    pos = off.unsqueeze(1) + torch.arange(width, dtype=torch.int64, device=store.device)
    new = old.scatter(1, pos, bits.to(torch.uint8))
    new = torch.where(mask.view(-1, 1), new, old)
    flat[idx] = bits_to_bytes(new)
