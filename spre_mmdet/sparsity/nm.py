"""N:M and unstructured masks in the layout sparse tensor cores accept, and their validation.

Layout (SPEC section 1): groups are ``M`` consecutive *input channels* at a fixed output channel
and kernel position. A conv weight ``(O, C, kh, kw)`` is viewed as ``(O, kh, kw, C)`` and cut
into rows of ``M``; a Linear weight ``(O, C)`` is cut along ``C`` the same way. Ties are broken
by channel index (a stable sort), so equal weights give the same mask on every rank.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

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


def from_groups(groups: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_groups`: rows of ``m`` back to a weight of ``shape``."""
    dim = len(shape)
    inverse = (0, dim - 1, *range(1, dim - 1))
    return groups.reshape(_permuted_shape(shape)).permute(inverse).contiguous()


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean N:M mask keeping the ``n`` largest ``|w|`` of each group of ``m`` input channels.

    Ties keep the lower channel index (as a stable sort would), so the mask is deterministic.
    """
    n, m = check_nm(n, m)
    magnitude = torch.nan_to_num_(to_groups(weight.detach().float().abs(), m), nan=float('inf'))
    # Non-negative float32 bit patterns order like the floats, so (bits, -index) packed into one
    # int64 is a unique key per weight: a plain top-k on it is deterministic and tie-breaks by
    # the lower channel index (~20x faster on CPU than a stable sort or pairwise ranking).
    index = torch.arange(m - 1, -1, -1, device=magnitude.device, dtype=torch.int64)
    key = magnitude.view(torch.int32).to(torch.int64) * m + index
    keep = torch.zeros(magnitude.shape, dtype=torch.bool, device=magnitude.device)
    keep.scatter_(1, key.topk(n, dim=1, sorted=False).indices, True)
    return from_groups(keep, weight.shape)


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
