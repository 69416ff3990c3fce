"""Reference checks for the sparsity tests, written independently of ``spre_mmdet.sparsity``.

Everything here walks the weight with explicit numpy loops over ``(o, i, j, channel group)``
(docs/methods/srste_asp.md, N:M layout), so a wrong layout or a wrong reshape in the
implementation cannot be reproduced by the checker.
"""
from fractions import Fraction
from typing import Iterator, Tuple

import numpy as np
import torch


def _np(tensor) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bool:
            return tensor.numpy()
        return tensor.double().numpy()
    return np.asarray(tensor)


def iter_groups(shape: Tuple[int, ...], m: int) -> Iterator[Tuple[tuple, ...]]:
    """Yield every N:M group as a tuple of ``m`` full indices into a weight of ``shape``.

    Conv ``(O, C, kh, kw)``: ``m`` consecutive input channels at fixed ``(o, i, j)``.
    Linear ``(O, C)``: ``m`` consecutive input features at fixed ``o``.
    """
    if len(shape) == 4:
        out_c, in_c, kh, kw = shape
        assert in_c % m == 0, f'{in_c} not divisible by {m}'
        for o in range(out_c):
            for i in range(kh):
                for j in range(kw):
                    for c0 in range(0, in_c, m):
                        yield tuple((o, c, i, j) for c in range(c0, c0 + m))
    elif len(shape) == 2:
        out_c, in_c = shape
        assert in_c % m == 0, f'{in_c} not divisible by {m}'
        for o in range(out_c):
            for c0 in range(0, in_c, m):
                yield tuple((o, c) for c in range(c0, c0 + m))
    else:
        raise AssertionError(f'unsupported weight rank {len(shape)}')


def group_nonzero_counts(tensor, m: int) -> np.ndarray:
    """Number of non-zeros in every group, in ``(o, i, j, group)`` order."""
    arr = _np(tensor)
    return np.array([sum(1 for idx in group if arr[idx] != 0)
                     for group in iter_groups(arr.shape, m)])


def assert_nm_pattern(tensor, n: int, m: int, exact: bool = False) -> None:
    """Assert at most ``n`` (``exact``: exactly ``n``) non-zeros in every group of ``m``."""
    arr = _np(tensor)
    for group in iter_groups(arr.shape, m):
        count = sum(1 for idx in group if arr[idx] != 0)
        if count > n or (exact and count != n):
            raise AssertionError(
                f'group {group[0]}..{group[-1]} has {count} non-zeros, expected '
                f'{"exactly" if exact else "at most"} {n} (N:M {n}:{m})')


def reference_nm_mask(weight, n: int, m: int) -> np.ndarray:
    """N:M mask by a plain loop: per group, keep the ``n`` largest ``|w|``; ties keep the
    lower channel index."""
    arr = np.abs(_np(weight))
    mask = np.zeros(arr.shape, dtype=bool)
    for group in iter_groups(arr.shape, m):
        ranked = sorted(range(m), key=lambda k: (-arr[group[k]], k))
        for k in ranked[:n]:
            mask[group[k]] = True
    return mask


def reference_unstructured_keep_count(numel: int, density) -> int:
    """``round(density * numel)`` with the float density the mask gets: at an exact half
    (``0.01 * 50``) the float product decides, e.g. ``0.010000000000000002 * 50`` keeps 1."""
    return int(round(float(density) * numel))


def reference_spatial_mask(weight, n: int, m: int) -> np.ndarray:
    """SpRe's ``S`` (docs/methods/spre.md, steps 1-4) in exact arithmetic.

    Assumes no ties at the unstructured threshold (continuous random weights)."""
    arr = np.abs(_np(weight))
    out_c, in_c, kh, kw = arr.shape
    keep = reference_unstructured_keep_count(arr.size, Fraction(n, m))
    flat = arr.reshape(-1)
    order = sorted(range(flat.size), key=lambda k: (-flat[k], k))
    kept = np.zeros(flat.size, dtype=bool)
    kept[order[:keep]] = True
    kept = kept.reshape(arr.shape)
    p = 1 - Fraction(n, m)
    spatial = np.zeros((kh, kw))
    for i in range(kh):
        for j in range(kw):
            kept_here = int(kept[:, :, i, j].sum())
            pruned_fraction = Fraction(out_c * in_c - kept_here, out_c * in_c)
            spatial[i, j] = 1.0 if pruned_fraction < p else 0.0
    return spatial
