"""Per-kernel-position sparsity of one ``k x k`` conv weight: unstructured vs N:M vs SpRe.

N:M removes exactly ``p = 1 - N/M`` of the weights at every kernel position ``(i, j)``;
unstructured magnitude pruning at the same overall rate removes less at some positions and more
at others, and SpRe's spatial mask ``S`` marks the positions it keeps denser (see
docs/methods/spre.md). :func:`analyze_layer` measures all three on one weight
(:class:`LayerAnalysis`); :func:`summarize` averages layers of the same kernel size
(:class:`KernelSummary`).
"""
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import SpreMMDetError
from ..sparsity.nm import check_nm, check_nm_tensor, nm_incompatibility, nm_mask, unstructured_mask
from ..sparsity.spre import spatial_mask

__all__ = [
    'NOISE_Z', 'AnalysisError', 'LayerAnalysis', 'SkippedLayer', 'KernelSummary',
    'position_sparsity', 'unstructured_position_sparsity', 'nm_position_sparsity',
    'analyze_layer', 'summarize'
]


#: Layers whose per-position deviation stays below this many sigmas are flagged as noise.
NOISE_Z = 4.0


class AnalysisError(SpreMMDetError, ValueError):
    """A user-facing problem with the input (reported without a traceback by the tool)."""


def position_sparsity(mask: torch.Tensor) -> np.ndarray:
    """Pruned fraction at each kernel position of a conv mask ``(O, C, kh, kw)``: ``kh x kw``."""
    if mask.dim() != 4:
        raise ValueError(f'expected a conv mask (O, C, kh, kw), got shape {tuple(mask.shape)}')
    kept = mask.detach().to(torch.float64).ne(0).to(torch.float64)
    return (1.0 - kept.mean(dim=(0, 1))).cpu().numpy()


def unstructured_position_sparsity(weight: torch.Tensor, n: int, m: int) -> np.ndarray:
    """Per-position sparsity of unstructured magnitude pruning at ``1 - n/m`` over the layer."""
    n, m = check_nm(n, m)
    return position_sparsity(unstructured_mask(weight.detach().float(), n / m))


def nm_position_sparsity(weight: torch.Tensor, n: int, m: int,
                         mask: Optional[torch.Tensor] = None) -> np.ndarray:
    """Per-position sparsity of N:M: of ``mask`` if given, else of ``nm_mask(weight)``.

    For a true N:M mask this is exactly ``1 - n/m`` at every position, by construction.
    """
    n, m = check_nm(n, m)
    if mask is None:
        mask = nm_mask(weight.detach().float(), n, m)
    return position_sparsity(mask)


@dataclass
class LayerAnalysis:
    """Per-position numbers of one ``k x k`` conv (all arrays are ``kh x kw``).

    Attributes:
        name: the conv's name (state-dict key without ``.weight``).
        shape: the weight's shape ``(O, C, kh, kw)``.
        n, m: the N:M pattern analysed.
        unstructured: pruned fraction of unstructured magnitude pruning at ``1 - n/m``.
        nm: pruned fraction of N:M (the checkpoint's mask, or ``nm_mask`` of the weight).
        spatial: SpRe's ``S`` (the checkpoint's ``spatial`` buffer, or ``spatial_mask``).
        spatial_computed: ``spatial_mask`` of the weight in the checkpoint, always computed; it
            differs from a stored ``S`` only if the weight changed since ``S``'s last refresh.
        main_density: density of the main N:M branch (``1 - nm``).
        rep_density: density of the extra branch ``W_rep * B * S`` (``main_density * S``).
        nm_source / spatial_source: ``'checkpoint'`` or ``'computed'``.
        notes: warnings about this layer (e.g. a stored mask that is not N:M).
    """

    name: str
    shape: Tuple[int, ...]
    n: int
    m: int
    unstructured: np.ndarray
    nm: np.ndarray
    spatial: np.ndarray
    spatial_computed: np.ndarray
    nm_source: str = 'computed'
    spatial_source: str = 'computed'
    notes: List[str] = field(default_factory=list)

    @property
    def kernel(self) -> Tuple[int, int]:
        """The kernel size ``(kh, kw)``."""
        return tuple(self.shape[2:])

    @property
    def rate(self) -> float:
        """The overall pruning rate ``p = 1 - n/m``."""
        return 1.0 - self.n / self.m

    @property
    def main_density(self) -> np.ndarray:
        """Kept fraction of the main N:M branch per position (``1 - nm``)."""
        return 1.0 - self.nm

    @property
    def rep_density(self) -> np.ndarray:
        """Kept fraction of the extra branch ``W_rep * B * S`` per position."""
        return self.main_density * self.spatial

    @property
    def block_density(self) -> np.ndarray:
        """Trainable non-zeros per position of the SpRe block, relative to one dense kernel.

        ``main + rep``: ``n/m`` where ``S = 0`` and ``2 n/m`` where ``S = 1``. The deployed
        (re-parameterized) conv is still exactly N:M, i.e. ``n/m`` everywhere.
        """
        return self.main_density + self.rep_density

    @property
    def noise_z(self) -> float:
        """Largest ``|unstructured - p|`` over positions, in standard deviations of a random mask.

        A mask keeping a random ``n/m`` of the ``O * C`` weights at each position has a per-position
        sparsity with standard deviation ``sqrt(p (1 - p) / (O C))``; values below ~4 mean the
        per-position differences (and so ``S``) are indistinguishable from noise.
        """
        sigma = math.sqrt(self.rate * (1.0 - self.rate) / (self.shape[0] * self.shape[1]))
        return float(np.abs(self.unstructured - self.rate).max() / sigma)

    @property
    def spatial_agrees(self) -> bool:
        """Whether ``S`` equals ``spatial_mask`` of the analysed weight."""
        return bool(np.array_equal(self.spatial, self.spatial_computed))


@dataclass
class SkippedLayer:
    """A ``k x k`` conv that could not be analysed, and why."""

    name: str
    shape: Tuple[int, ...]
    reason: str


def analyze_layer(name: str, weight: torch.Tensor, n: int, m: int,
                  mask: Optional[torch.Tensor] = None, spatial: Optional[torch.Tensor] = None
                  ) -> LayerAnalysis:
    """Analyse one conv weight ``(O, C, kh, kw)``, using ``mask`` (B) and ``spatial`` (S) if given.

    Raises:
        AnalysisError: if the weight cannot be N:M (input channels not divisible by ``m``).
    """
    n, m = check_nm(n, m)
    if weight.dim() != 4:
        raise AnalysisError(f'{name}: expected a conv weight (O, C, kh, kw), got shape '
                            f'{tuple(weight.shape)}')
    reason = nm_incompatibility(weight.shape, m)
    if reason is not None:
        raise AnalysisError(f'{name}: cannot be {n}:{m} sparse: {reason}')
    weight = weight.detach().float().cpu()
    notes: List[str] = []

    nm_source = 'computed'
    if mask is not None:
        if tuple(mask.shape) != tuple(weight.shape):
            notes.append(f'stored mask has shape {tuple(mask.shape)} != weight '
                         f'{tuple(weight.shape)}; ignored, N:M computed from the weight')
            mask = None
        else:
            check = check_nm_tensor(mask.ne(0).float(), n, m)
            if not check.ok:
                notes.append(f'stored mask is {check.explain()} (trained with another N:M? '
                             'pass --n/--m to match)')
            nm_source = 'checkpoint'
    elif weight.ne(0).float().mean().item() <= n / m + 1e-9 and check_nm_tensor(weight, n, m).ok:
        notes.append(f'the weight itself is already {n}:{m} (a deployed / re-parameterized '
                     'checkpoint?): per-position differences of the dense latent weight are gone; '
                     'analyse a training checkpoint instead')
    nm = nm_position_sparsity(weight, n, m, mask=mask)

    computed = spatial_mask(weight, n, m).cpu().numpy().astype(np.float64)
    spatial_source = 'computed'
    s = computed
    if spatial is not None:
        if tuple(spatial.shape) != tuple(weight.shape[2:]):
            notes.append(f'stored spatial mask has shape {tuple(spatial.shape)} != kernel '
                         f'{tuple(weight.shape[2:])}; ignored, S computed from the weight')
        else:
            s = (spatial.detach().float().cpu().numpy() != 0).astype(np.float64)
            spatial_source = 'checkpoint'
    return LayerAnalysis(
        name=name, shape=tuple(weight.shape), n=n, m=m,
        unstructured=unstructured_position_sparsity(weight, n, m), nm=nm, spatial=s,
        spatial_computed=computed, nm_source=nm_source, spatial_source=spatial_source,
        notes=notes)


@dataclass
class KernelSummary:
    """Per-position means over the layers sharing one kernel size (arrays ``kh x kw``).

    ``spatial_frequency`` is the fraction of those layers in which a position has ``S = 1``.
    """

    kernel: Tuple[int, int]
    num_layers: int
    n: int
    m: int
    unstructured: np.ndarray
    nm: np.ndarray
    spatial_frequency: np.ndarray
    block_density: np.ndarray

    @property
    def label(self) -> str:
        """Row name in tables and CSVs, e.g. ``'overall[3x3]'``."""
        return f'overall[{self.kernel[0]}x{self.kernel[1]}]'


def summarize(layers: Sequence[LayerAnalysis]) -> List[KernelSummary]:
    """Average the layers of each kernel size (each layer counts once), most layers first."""
    groups: 'OrderedDict[Tuple[int, int], List[LayerAnalysis]]' = OrderedDict()
    for layer in layers:
        groups.setdefault(layer.kernel, []).append(layer)
    out = []
    for kernel, group in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        def mean(attr):
            return np.mean([getattr(g, attr) for g in group], axis=0)
        out.append(KernelSummary(kernel, len(group), group[0].n, group[0].m,
                                 mean('unstructured'), mean('nm'), mean('spatial'),
                                 mean('block_density')))
    return out
