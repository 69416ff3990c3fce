"""N:M and unstructured masks in the layout sparse tensor cores accept, and their validation.

Layout (docs/methods/srste_asp.md, N:M layout): groups are ``M`` consecutive *input channels*
at a fixed output channel and kernel position. A conv weight ``(O, C, kh, kw)`` is viewed as
``(O, kh, kw, C)`` and cut into rows of ``M``; a Linear weight ``(O, C)`` is cut along ``C`` the
same way. Ties are broken by channel index (a stable sort), so equal weights give the same mask
on every rank.

Every mask here is computed with a fixed sequence of tensor operations whose sizes depend only
on the shapes: no value is read back to the host, so a refresh never waits for the device.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError


def check_nm(n: int, m: int) -> Tuple[int, int]:
    """Validate an N:M ratio and return it as ints.

    Raises:
        ConfigError: (a ``ValueError``) if ``not 1 <= n < m`` (with the fix in the message).
    """
    if isinstance(n, bool) or isinstance(m, bool) or int(n) != n or int(m) != m:
        raise ConfigError(f'N:M must be integers, got {n!r}:{m!r}. Use e.g. n=2, m=4.')
    n, m = int(n), int(m)
    if not 1 <= n < m:
        raise ConfigError(
            f'Invalid N:M {n}:{m}: it needs 1 <= N < M (at most N non-zeros in every group of '
            f'M). Use e.g. n=2, m=4, the 2:4 pattern NVIDIA sparse tensor cores accelerate.')
    return n, m


def nm_incompatibility(weight_shape: torch.Size, m: int) -> Optional[str]:
    """Why a weight of this shape cannot be N:M in the hardware layout, or ``None`` if it can."""
    if len(weight_shape) < 2:
        return f'weight of shape {tuple(weight_shape)} has no input-channel dimension'
    in_channels = weight_shape[1]
    if in_channels % m:
        return f'{in_channels} input channels are not divisible by M={m}'
    return None


def _permuted_shape(shape: torch.Size) -> Tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1])


def to_groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """View ``weight`` as rows of ``m`` consecutive input channels, shape ``(groups, m)``."""
    reason = nm_incompatibility(weight.shape, m)
    if reason is not None:
        raise ValueError(f'Cannot form N:M groups: {reason}.')
    perm = (0, *range(2, weight.dim()), 1)
    return weight.permute(perm).reshape(-1, m)


def from_groups(groups: torch.Tensor, shape: torch.Size,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Inverse of :func:`to_groups`: rows of ``m`` back to a weight of ``shape`` (written into
    ``out`` if given: one copy instead of two)."""
    dim = len(shape)
    inverse = (0, dim - 1, *range(1, dim - 1))
    weight = groups.reshape(_permuted_shape(shape)).permute(inverse)
    return weight.contiguous() if out is None else out.copy_(weight)


#: Layers are ranked together, in batches of up to this many weights: a few large tensor
#: operations instead of some twenty per layer (on a GPU each one is a kernel launch).
BATCH_NUMEL = 1 << 22


def _check_groups(weight: torch.Tensor, m: int) -> None:
    reason = nm_incompatibility(weight.shape, m)
    if reason is not None:
        raise ValueError(f'Cannot form N:M groups: {reason}.')


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean N:M mask keeping the ``n`` largest ``|w|`` of each group of ``m`` input channels.

    Ties keep the lower channel index (as a stable sort would), so the mask is deterministic.
    NaN counts as larger than any number (NaNs tie among themselves; +-inf ties with the
    largest finite float).
    """
    return nm_masks([weight], n, m)[0]


def nm_masks(weights: Sequence[torch.Tensor], n: int, m: int,
             out: Optional[Sequence[torch.Tensor]] = None) -> List[torch.Tensor]:
    """:func:`nm_mask` of every tensor in ``weights``, computed together in a few large
    operations (see :data:`BATCH_NUMEL`).

    Args:
        weights: weights of any shapes with ``C % m == 0``, on any devices, of any float dtype.
        n, m: the N:M pattern.
        out: bool tensors of the weights' shapes to write the masks into (e.g. the learners'
            mask buffers); new tensors if ``None``.

    Returns:
        The masks (``out`` if given).
    """
    n, m = check_nm(n, m)
    weights = list(weights)
    for weight in weights:
        _check_groups(weight, m)
    if out is None:
        out = [torch.empty(w.shape, dtype=torch.bool, device=w.device) for w in weights]
    else:
        out = list(out)
        if len(out) != len(weights):
            raise ValueError(f'{len(out)} out masks for {len(weights)} weights.')
        for weight, mask in zip(weights, out):
            if mask.shape != weight.shape or mask.dtype != torch.bool:
                raise ValueError(f'out mask {tuple(mask.shape)} {mask.dtype} does not fit a '
                                 f'weight of shape {tuple(weight.shape)}.')
    # weights of one device and kernel size share a batch (the patterns below depend on K)
    kinds = {}
    for i, weight in enumerate(weights):
        kinds.setdefault((weight.device, weight[0, 0].numel()), []).append(i)
    for indices in kinds.values():
        batch, size = [], 0
        for i in indices:
            if batch and size + weights[i].numel() > BATCH_NUMEL:
                _rank_batch([weights[j] for j in batch], [out[j] for j in batch], n, m)
                batch, size = [], 0
            batch.append(i)
            size += weights[i].numel()
        _rank_batch([weights[j] for j in batch], [out[j] for j in batch], n, m)
    return out


_FLOAT_MAX = torch.finfo(torch.float32).max
_INF_BITS = 0x7f800000  # +inf as int32; every NaN is above it once the sign is dropped

# Periodic int16/uint8 patterns over flat weight positions (see _rank_batch), per
# (what, m, K, n or shift, device): built once, as long as the largest batch so far.
_patterns = {}


def _pattern(what: str, m: int, k: int, value: int, size: int,
             device: torch.device) -> torch.Tensor:
    """``size`` entries of a pattern of period ``m*k`` over positions ``p`` whose group member
    is ``j = (p // k) % m``: ``'start'``: ``m - 1 - j - n`` in the counters' dtype
    (:func:`_counter_dtype`; modulo 256 in uint8, ``value=n``); ``'pair'``: ``j + s < m``
    (uint8 0/1, ``value=s``)."""
    key = (what, m, k, value, device)
    pattern = _patterns.get(key)
    if pattern is None or pattern.numel() < size:
        member = torch.arange(m * k, device=device) // k
        if what == 'start':
            period = m - 1 - member - value
            period = (period % 256 if _counter_dtype(m) == torch.uint8 else period).to(
                _counter_dtype(m))
        else:
            period = (member + value < m).to(torch.uint8)
        pattern = period.repeat(-(-max(size, 1 << 16) // (m * k)))
        _patterns[key] = pattern
    return pattern[:size]


def _counter_dtype(m: int) -> torch.dtype:
    """The rank counters' dtype: bytes, like the comparisons they add up (same-dtype arithmetic,
    the fast path), while ``rank - n`` fits a signed byte (``m <= 128``); 16 bits beyond."""
    return torch.uint8 if m <= 128 else torch.int16


def _magnitude_keys(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``|w|`` of all ``weights`` laid end to end, flat, as int32 keys that order as the
    magnitudes: ``+-inf`` ties with the largest finite float32 and every NaN ranks above all
    numbers (one value, so NaNs tie). Computed in float32 whatever the weights' dtype (a half
    inf becomes the float32 maximum) and whether or not autocast is on."""
    key = torch.empty(sum(w.numel() for w in weights), dtype=torch.float32,
                      device=weights[0].device)
    torch.cat([w.detach().reshape(-1) for w in weights], out=key).abs_()
    key.clamp_(max=_FLOAT_MAX)  # +inf -> the largest float; NaN stays NaN
    # non-negative floats order as their bit patterns; every NaN -> one value above them
    return key.view(torch.int32).clamp_(max=_INF_BITS)


def _rank_batch(weights: List[torch.Tensor], out: List[torch.Tensor], n: int, m: int) -> None:
    """Write the N:M masks of ``weights`` (one device, one kernel size ``K``) into ``out``.

    The weights are laid end to end as :func:`_magnitude_keys`, in their own layout: position
    ``p`` holds member ``j = (p // K) % m`` of its group, and member ``j + s`` of the same group
    sits at ``p + s*K``. So ``key[p] >= key[p + s*K]`` over the whole buffer, one long
    contiguous comparison per ``s``, decides every pair of members ``s`` apart (where
    ``j + s < m``; the other positions compare across groups and are masked out by a periodic
    pattern).

    ``rank[p]`` counts the members that beat the one at ``p``: a larger ``|w|``, or an equal one
    at a lower channel index; ``m*(m-1)/2`` pairs, each deciding one loss. It starts at
    ``m - 1 - j - n`` (as if every later member won) and ends at ``rank - n``: negative exactly
    when the member is kept (in uint8 counters, modulo 256: read as signed bytes).
    """
    device, k = weights[0].device, weights[0][0, 0].numel()
    sizes = [w.numel() for w in weights]
    total = sum(sizes)
    bits = _magnitude_keys(weights)
    rank = _pattern('start', m, k, n, total, device).clone()
    wins = torch.empty(total, dtype=torch.bool, device=device)
    for shift in range(1, m):
        d = shift * k
        won = wins[:total - d]
        torch.ge(bits[:total - d], bits[d:], out=won)  # member j beats member j + shift
        won, pair = won.view(torch.uint8), _pattern('pair', m, k, shift, total - d, device)
        rank[d:].addcmul_(won, pair)  # member j + shift lost once more
        rank[:total - d].addcmul_(won, pair, value=-1)  # member j did not lose to it
    signed = rank.view(torch.int8) if rank.dtype == torch.uint8 else rank
    start = 0
    for mask, size in zip(out, sizes):
        if mask.is_contiguous():
            torch.lt(signed[start:start + size], 0, out=mask.view(-1))
        else:
            mask.copy_(signed[start:start + size].lt(0).view(mask.shape))
        start += size


def _kth_largest_key(keys: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest of the flat int32 ``keys`` of :func:`_magnitude_keys` (all in
    ``[0, 2**31)``), ``1 <= k <= keys.numel()``, as a 0-d tensor on their device.

    A two-pass radix select: a histogram of the high 15 bits finds the bucket holding the
    ``k``-th largest key, a histogram of the low 16 bits of that bucket's keys finds the value.
    Two passes over the keys, no sort and no host sync (``index_add_`` has a deterministic CUDA
    implementation); ``torch.kthvalue`` takes one thread block per slice on CUDA, and on CPU
    twice as long as this for a 2.4M-entry layer.
    """
    device = keys.device
    high = keys >> 16
    ones = torch.ones(1, dtype=torch.int32, device=device).expand(keys.numel())
    counts = torch.zeros(1 << 15, dtype=torch.int32, device=device).index_add_(0, high, ones)
    # at_least[b]: the keys whose high bits are >= b (a zero appended for b = 2**15)
    at_least = torch.cat([counts.flip(0).cumsum(0, dtype=torch.int32).flip(0),
                          counts.new_zeros(1)])
    bucket = (at_least >= k).sum() - 1  # the largest b with at least k keys at or above it
    # the k-th largest is the rank-th largest of bucket b (gather: indexing by a tensor syncs)
    rank = k - at_least.gather(0, (bucket + 1).reshape(1))
    counts = torch.zeros(1 << 16, dtype=torch.int32, device=device).index_add_(
        0, keys & 0xFFFF, (high == bucket).to(torch.int32))
    at_least = counts.flip(0).cumsum(0, dtype=torch.int32).flip(0)
    return ((bucket.to(torch.int32) << 16) | ((at_least >= rank).sum() - 1).to(torch.int32))


def unstructured_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask keeping the top ``density`` fraction of ``|w|`` over the whole tensor.

    NaN ranks above every number and ``+-inf`` ties with the largest float, as in
    :func:`nm_mask`; ties at the threshold keep the lowest flat indices. Linear time (a radix
    select of the threshold and a running count, no sort) and no host sync: the number kept is
    fixed by the shape.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f'density must be in (0, 1], got {density}')
    keys = _magnitude_keys([weight])
    keep_count = int(round(density * keys.numel()))
    if keep_count == 0:
        return torch.zeros_like(weight, dtype=torch.bool)
    # the keep_count-th largest key; entries above it are kept, and as many of those equal to
    # it as are still needed, lowest flat index first
    threshold = _kth_largest_key(keys, keep_count)
    above = keys > threshold
    at_threshold = keys == threshold
    still_needed = keep_count - above.sum()
    first_ties = torch.cumsum(at_threshold, 0, dtype=torch.int32) <= still_needed
    keep = above | (at_threshold & first_ties)
    return keep.view(weight.shape)


@dataclass
class NMCheck:
    """Result of checking one tensor against N:M.

    Attributes:
        n, m: the pattern checked.
        num_groups: number of groups of ``m``.
        num_violations: groups holding more than ``n`` non-zeros.
        reason: why the tensor cannot be N:M at all (layout), if so.
        examples: a few violating groups, explained.
    """

    n: int
    m: int
    num_groups: int = 0
    num_violations: int = 0
    reason: Optional[str] = None
    examples: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is None and self.num_violations == 0

    def explain(self) -> str:
        if self.reason is not None:
            return f'not {self.n}:{self.m}: {self.reason}'
        if self.ok:
            return f'{self.n}:{self.m} valid ({self.num_groups} groups)'
        return (f'not {self.n}:{self.m}: {self.num_violations}/{self.num_groups} groups exceed '
                f'{self.n} non-zeros, e.g. ' + '; '.join(self.examples))


def check_nm_tensor(weight: torch.Tensor, n: int, m: int, max_examples: int = 3) -> NMCheck:
    """Check that ``weight`` is N:M in the hardware layout, explaining every kind of violation."""
    n, m = check_nm(n, m)
    result = NMCheck(n, m)
    result.reason = nm_incompatibility(weight.shape, m)
    if result.reason is not None:
        return result
    nonzeros = to_groups(weight.detach() != 0, m).sum(dim=1)
    result.num_groups = nonzeros.numel()
    bad = torch.nonzero(nonzeros > n).flatten()
    result.num_violations = bad.numel()
    permuted = _permuted_shape(weight.shape)  # (O, *kernel, C)
    groups_per_row = permuted[-1] // m
    for g in bad[:max_examples].tolist():
        index = list(torch.unravel_index(torch.tensor(g // groups_per_row), permuted[:-1]))
        first = (g % groups_per_row) * m
        where = f'out={int(index[0])}'
        if len(index) > 1:
            where += f', kernel={tuple(int(i) for i in index[1:])}'
        result.examples.append(
            f'{where}, in-channels {first}..{first + m - 1}: {int(nonzeros[g])} non-zeros')
    return result
