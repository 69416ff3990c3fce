"""N:M and unstructured masks in the layout sparse tensor cores accept, and their validation.

Layout (docs/methods/srste_asp.md, N:M layout): groups are ``M`` consecutive *input channels*
at a fixed output channel and kernel position. A conv weight ``(O, C, kh, kw)`` is viewed as
``(O, kh, kw, C)`` and cut into rows of ``M``; a Linear weight ``(O, C)`` is cut along ``C`` the
same way. Ties are broken by channel index (a stable sort), so equal weights give the same mask
on every rank.

The masks are computed without sorting or permuted index tensors: ``(O, C, kh, kw)`` viewed as
``(O*C/M, M, kh*kw)`` holds the ``M`` members of every group at one stride, and ranking ``M``
values takes ``M*(M-1)/2`` comparisons (:func:`nm_mask`). Contiguous float32 CPU weights are
ranked by a fused kernel in one pass (:mod:`~spre_mmdet.sparsity.native`); the eager tensor
code here is the reference it matches, and runs everywhere else (CUDA, half, other layouts).
"""
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from . import native

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
#: operations instead of some twenty per layer (each one a parallel region, which costs much
#: more than its work on busy or shared cores; on a GPU each one is a kernel launch).
BATCH_NUMEL = 1 << 22


def _check_groups(weight: torch.Tensor, m: int) -> None:
    reason = nm_incompatibility(weight.shape, m)
    if reason is not None:
        raise ValueError(f'Cannot form N:M groups: {reason}.')


def _member_layout(weight: torch.Tensor, m: int) -> torch.Tensor:
    """``weight`` viewed as ``(O*C/m, m, K)`` (a copy only if it is not contiguous)."""
    out_c, in_c = weight.shape[:2]
    return weight.detach().reshape(out_c * in_c // m, m, -1)


def _write_member_values(weight: torch.Tensor, m: int, out: torch.Tensor) -> None:
    """Fill ``out`` (``(m, O*C/m, K)`` float32) with :func:`member_magnitudes` of ``weight``,
    signs left for the caller to drop (``abs_``, once over many weights)."""
    src = _member_layout(weight, m).transpose(0, 1)
    if weight.dtype == torch.float32:
        torch.nan_to_num(src, nan=float('inf'), out=out)  # one pass: permute + NaN
    else:  # convert first: a half inf must become the float32 maximum, as before
        out.copy_(src)
        out.nan_to_num_(nan=float('inf'))


def member_magnitudes(weight: torch.Tensor, m: int) -> torch.Tensor:
    """``|w|`` as float32 in the layout ``(m, O*C/m, K)``: entry ``[j, r, k]`` is member ``j``
    (input channel ``(r % (C/m)) * m + j``) of the group of row ``r`` (output channel
    ``r // (C/m)``) at kernel position ``k`` (``K = kh*kw``; 1 for a Linear weight).

    Every member index is one contiguous slice, so the ranking in :func:`nm_mask` runs on
    contiguous memory. NaN becomes ``+inf`` and ``+-inf`` the largest finite float
    (``torch.nan_to_num``): NaN ranks above every number, the order :func:`nm_mask` has always
    used.
    """
    _check_groups(weight, m)
    src = _member_layout(weight, m)
    out = torch.empty((m, src.shape[0], src.shape[2]), dtype=torch.float32,
                      device=weight.device)
    _write_member_values(weight, m, out)
    return out.abs_()


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean N:M mask keeping the ``n`` largest ``|w|`` of each group of ``m`` input channels.

    Ties keep the lower channel index (as a stable sort would), so the mask is deterministic.
    NaN counts as larger than any number (NaNs tie among themselves; +-inf ties with the
    largest finite float).
    """
    return nm_masks([weight], n, m)[0]


def nm_masks(weights: Sequence[torch.Tensor], n: int, m: int,
             out: Optional[Sequence[torch.Tensor]] = None,
             magnitude_hook: Optional[Callable[[int, torch.Tensor], None]] = None
             ) -> List[torch.Tensor]:
    """:func:`nm_mask` of every tensor in ``weights``, computed together in a few large
    operations (see :data:`BATCH_NUMEL`).

    Args:
        weights: weights of any shapes with ``C % m == 0``, on any devices.
        n, m: the N:M pattern.
        out: bool tensors of the weights' shapes to write the masks into (e.g. the learners'
            mask buffers); new tensors if ``None``.
        magnitude_hook: called as ``hook(i, magnitude)`` for every weight ranked by the
            eager code, with ``|w_i|`` as float32 in ``w_i``'s shape (NaN -> inf, inf -> the
            largest float: the order of the masks), for other work on the same magnitudes
            (SpRe's ``S``). Valid only during the call; do not modify it. The fused kernel
            computes no magnitudes: weights it ranks get no call.

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
    eager = range(len(weights))
    fused = [i for i in eager if native.handles(weights[i]) and out[i].is_contiguous()]
    if fused and native.nm_masks([weights[i] for i in fused], [out[i] for i in fused], n, m):
        eager = sorted(set(eager) - set(fused))
    if m > 128:  # ranks would not fit the uint8 counters below; never a hardware pattern
        for i in eager:
            out[i].copy_(_nm_mask_by_sort(member_magnitudes(weights[i], m), n,
                                          weights[i].shape))
        return out
    # weights of one device and kernel size share a batch (the patterns below depend on K)
    kinds = {}
    for i in eager:
        weight = weights[i]
        kinds.setdefault((weight.device, weight[0, 0].numel()), []).append(i)
    for indices in kinds.values():
        batch, size = [], 0
        for i in indices:
            if batch and size + weights[i].numel() > BATCH_NUMEL:
                _rank_batch(weights, out, batch, n, m, magnitude_hook)
                batch, size = [], 0
            batch.append(i)
            size += weights[i].numel()
        _rank_batch(weights, out, batch, n, m, magnitude_hook)
    return out


_FLOAT_MAX = torch.finfo(torch.float32).max
_FLOAT_MAX_BITS = 0x7f7fffff
_INF_BITS = 0x7f800000  # +inf as int32; every NaN is above it once the sign is dropped

# Periodic uint8/bool patterns over flat weight positions (see _rank_batch), per
# (what, m, K, n or shift, device): built once, as long as the largest batch so far.
_patterns = {}


def _pattern(what: str, m: int, k: int, value: int, size: int,
             device: torch.device) -> torch.Tensor:
    """``size`` entries of a pattern of period ``m*k`` over positions ``p`` whose group member
    is ``j = (p // k) % m``: ``'start'``: ``(m - 1 - j - n) mod 256`` (uint8, ``value=n``);
    ``'pair'``: ``j + s < m`` (uint8 0/1, ``value=s``)."""
    key = (what, m, k, value, device)
    pattern = _patterns.get(key)
    if pattern is None or pattern.numel() < size:
        member = torch.arange(m * k, device=device) // k
        period = (m - 1 - member - value) % 256 if what == 'start' else member + value < m
        pattern = period.to(torch.uint8).repeat(-(-max(size, 1 << 16) // (m * k)))
        _patterns[key] = pattern
    return pattern[:size]


def _rank_batch(all_weights: List[torch.Tensor], all_out: List[torch.Tensor], batch: List[int],
                n: int, m: int, magnitude_hook=None) -> None:
    """Write the N:M masks of ``all_weights[batch]`` (one device, one kernel size ``K``) into
    ``all_out[batch]``.

    The weights are laid end to end, flat, as ``|w|`` (NaN -> above everything, +-inf -> the
    largest float, as :func:`member_magnitudes`), in their own layout: position ``p`` holds
    member ``j = (p // K) % m`` of its group, and member ``j + s`` of the same group sits at
    ``p + s*K``. So ``key[p] >= key[p + s*K]`` over the whole buffer, one long contiguous
    comparison per ``s``, decides every pair of members ``s`` apart (where ``j + s < m``; the
    other positions compare across groups and are masked out by a periodic pattern).

    rank[p] counts the members that beat the one at ``p``: a larger ``|w|``, or an equal one
    at a lower channel index; ``m*(m-1)/2`` pairs, each deciding one loss. The counters are the
    output bytes themselves (uint8, ``rank - n`` mod 256): bit 7 is set exactly when
    ``rank < n``, i.e. kept.
    """
    weights, out = [all_weights[i] for i in batch], [all_out[i] for i in batch]
    device, k = weights[0].device, weights[0][0, 0].numel()
    sizes = [w.numel() for w in weights]
    total = sum(sizes)
    key = torch.empty(total, dtype=torch.float32, device=device)
    # one copy for the whole batch (converted to float32 first: a half inf must become the
    # float32 maximum below, as it always has), then one abs
    torch.cat([weight.detach().reshape(-1) for weight in weights], out=key).abs_()
    bits = key.view(torch.int32)  # non-negative floats order as their bit patterns
    if int(bits.amax()) > _FLOAT_MAX_BITS:  # some inf or NaN: map them
        key.clamp_(max=_FLOAT_MAX)  # +inf ties with the largest float; NaN stays
        bits.clamp_(max=_INF_BITS)  # every NaN -> one value above all numbers
    if magnitude_hook is not None:
        start = 0
        for i, weight, size in zip(batch, weights, sizes):
            magnitude_hook(i, key[start:start + size].view(weight.shape))
            start += size
    rank = _pattern('start', m, k, n, total, device).clone()  # as if later members all won
    wins = torch.empty(total, dtype=torch.bool, device=device)
    for shift in range(1, m):
        d = shift * k
        won = wins[:total - d]
        torch.ge(bits[:total - d], bits[d:], out=won)  # member j beats member j + shift
        won, pair = won.view(torch.uint8), _pattern('pair', m, k, shift, total - d, device)
        rank[d:].addcmul_(won, pair)  # member j + shift lost once more
        rank[:total - d].addcmul_(won, pair, value=-1)  # member j did not lose to it
    start = 0
    for mask, size in zip(out, sizes):
        target = mask if mask.is_contiguous() else torch.empty(mask.shape, dtype=torch.bool,
                                                               device=mask.device)
        # bit 7 -> 0/1 bytes, straight into the bool mask
        torch.bitwise_right_shift(rank[start:start + size], 7,
                                  out=target.view(torch.uint8).view(-1))
        if target is not mask:
            mask.copy_(target)
        start += size


def _nm_mask_by_sort(magnitude: torch.Tensor, n: int, shape: torch.Size) -> torch.Tensor:
    """:func:`nm_mask` by a stable sort of :func:`member_magnitudes` (for ``m > 128``)."""
    order = torch.argsort(magnitude, dim=0, descending=True, stable=True)
    keep = torch.zeros(magnitude.shape, dtype=torch.bool, device=magnitude.device)
    keep.scatter_(0, order[:n], True)
    return keep.transpose(0, 1).reshape(shape)


def unstructured_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask keeping the top ``density`` fraction of ``|w|`` over the whole tensor.

    Ties at the threshold keep the lowest flat indices. Linear time (a k-th value selection, no
    full sort): SpRe calls it for every k x k conv after every optimizer step.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f'density must be in (0, 1], got {density}')
    flat = weight.detach().abs().flatten()
    keep_count = int(round(density * flat.numel()))
    if keep_count == 0:
        return torch.zeros_like(weight, dtype=torch.bool)
    # the keep_count-th largest value; NaN sorts as the largest, as in nm_mask
    threshold = torch.kthvalue(flat, flat.numel() - keep_count + 1).values
    if torch.isnan(threshold):
        above = torch.zeros_like(flat, dtype=torch.bool)
        at_threshold = torch.isnan(flat)
    else:
        above = (flat > threshold) | torch.isnan(flat)
        at_threshold = flat == threshold
    still_needed = keep_count - int(above.sum())
    if int(at_threshold.sum()) == still_needed:  # the usual case: no tie to break
        return (above | at_threshold).view_as(weight)
    keep = above | (at_threshold & (torch.cumsum(at_threshold, 0) <= still_needed))
    return keep.view_as(weight)


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
