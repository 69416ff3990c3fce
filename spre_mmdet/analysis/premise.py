"""SpRe's premise, measured on trained dense weights, over seeds.

SpRe helps only if a trained network's ``k x k`` kernels have positions that matter more than
others: the centre and the cross (the positions in the centre's row and column) carrying
larger weights, so that unstructured magnitude pruning keeps them denser than N:M allows
(docs/methods/spre.md). Per layer and kernel position this module measures

* ``magnitude``: the mean ``|w|`` at the position relative to the layer's mean ``|w|``
  (1 everywhere for a kernel without a preferred position);
* ``kept[d]``: the fraction of the position's weights that unstructured magnitude pruning at
  density ``d`` over the whole layer keeps (``d`` everywhere without a preferred position;
  N:M keeps exactly ``d`` at every position by construction);

and aggregates runs (seeds) into the mean and the 95% Student-t interval of the mean over
seeds, per layer, per position and per region (centre / cross / corners), and for the mean of
the layers. :func:`premise_table` prints it, :func:`plot_premise` draws it.
"""
import csv
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..sparsity.nm import nm_incompatibility
from ._files import make_parent_dir
from .positions import AnalysisError, position_sparsity
from .state_dict import find_kxk_convs

__all__ = ['DEFAULT_DENSITIES', 'REGIONS', 'ALL_LAYERS', 'position_magnitude', 'position_kept',
           'region_masks', 'LayerPremise', 'premise_of_state_dict', 'Interval', 'PremiseStats',
           'aggregate', 'premise_table', 'write_premise_csv', 'plot_premise', 'parse_density']

DEFAULT_DENSITIES: Tuple[float, ...] = (1 / 2, 1 / 8, 1 / 16)
REGIONS: Tuple[str, ...] = ('centre', 'cross', 'corners')
#: the row name of the mean over layers
ALL_LAYERS = 'mean of layers'


def parse_density(text: str) -> float:
    """``'1/8'`` or ``'0.125'`` -> 0.125."""
    try:
        if '/' in text:
            a, b = text.split('/')
            value = float(a) / float(b)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f'a density is a fraction such as 1/8 or 0.125, got {text!r}') from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f'a density must be in (0, 1], got {text!r}')
    return value


def _density_label(density: float) -> str:
    inverse = 1.0 / density
    return f'1/{int(round(inverse))}' if abs(inverse - round(inverse)) < 1e-9 else f'{density:g}'


def position_magnitude(weight: torch.Tensor) -> np.ndarray:
    """Mean ``|w|`` at each kernel position of ``(O, C, kh, kw)``, over the layer's mean."""
    if weight.dim() != 4:
        raise ValueError(f'expected a conv weight (O, C, kh, kw), got shape {tuple(weight.shape)}')
    absolute = weight.detach().to(torch.float64).abs()
    overall = absolute.mean()
    if overall == 0:
        raise AnalysisError('an all-zero weight has no relative magnitude')
    return (absolute.mean(dim=(0, 1)) / overall).cpu().numpy()


def position_kept(weight: torch.Tensor, density: float) -> np.ndarray:
    """Kept fraction at each kernel position of unstructured magnitude pruning at ``density``
    over the whole layer (``kh x kw``)."""
    from ..sparsity.nm import unstructured_mask
    return 1.0 - position_sparsity(unstructured_mask(weight.detach().float(), density))


def region_masks(kernel: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """Boolean ``kh x kw`` masks of the centre, the cross (the rest of the centre's row and
    column) and the corners (everything else; the four corners of a 3x3)."""
    kh, kw = kernel
    if kh % 2 == 0 or kw % 2 == 0:
        raise AnalysisError(f'a {kh}x{kw} kernel has no centre position')
    centre = np.zeros((kh, kw), bool)
    centre[kh // 2, kw // 2] = True
    axes = np.zeros((kh, kw), bool)
    axes[kh // 2, :] = True
    axes[:, kw // 2] = True
    return OrderedDict(centre=centre, cross=axes & ~centre, corners=~axes)


@dataclass
class LayerPremise:
    """The premise numbers of one conv of one run (arrays ``kh x kw``)."""

    name: str
    shape: Tuple[int, ...]
    magnitude: np.ndarray
    kept: Dict[float, np.ndarray]

    @property
    def kernel(self) -> Tuple[int, int]:
        return tuple(self.shape[2:])


def premise_of_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str = 'backbone.',
                          densities: Sequence[float] = DEFAULT_DENSITIES,
                          m: Optional[int] = 16) -> Tuple[List[LayerPremise], List[str]]:
    """The premise numbers of every odd ``k x k`` conv under ``prefix``; returns
    ``(layers, skipped)``. With ``m``, convs that cannot be N:M with that ``M`` (e.g. a stem on
    3 input channels, which stays dense in every method) are skipped, so the layers are the ones
    a sparse method prunes."""
    names = find_kxk_convs(state_dict, prefix)
    if not names:
        raise AnalysisError(f'No k x k conv weights (k > 1) under prefix {prefix!r}.')
    layers, skipped = [], []
    for name in names:
        weight = state_dict[name + '.weight']
        reason = nm_incompatibility(weight.shape, m) if m else None
        if reason is None and (weight.shape[2] % 2 == 0 or weight.shape[3] % 2 == 0):
            reason = 'even kernel: no centre position'
        if reason is not None:
            skipped.append(f'{name} {tuple(weight.shape)}: {reason}')
            continue
        layers.append(LayerPremise(
            name=name, shape=tuple(weight.shape), magnitude=position_magnitude(weight),
            kept=OrderedDict((d, position_kept(weight, d)) for d in densities)))
    if not layers:
        raise AnalysisError(f'No analysable conv under {prefix!r}: ' + '; '.join(skipped))
    return layers, skipped


@dataclass
class Interval:
    """Mean over seeds, its 95% Student-t interval (``None`` from a single seed) and the
    values."""

    mean: float
    low: Optional[float]
    high: Optional[float]
    values: Tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float], confidence: float = 0.95) -> 'Interval':
        values = tuple(float(v) for v in values)
        k = len(values)
        mean = sum(values) / k
        if k < 2:
            return cls(mean, None, None, values)
        from scipy import stats
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
        half = stats.t.ppf(0.5 + confidence / 2, k - 1) * std / math.sqrt(k)
        return cls(mean, mean - half, mean + half, values)

    def format(self, digits: int = 3) -> str:
        if self.low is None:
            return f'{self.mean:.{digits}f}'
        return f'{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]'


@dataclass
class PremiseStats:
    """One data set's premise over seeds.

    ``positions[layer][measure]`` is a ``kh x kw`` array of :class:`Interval`; ``regions
    [layer][measure][region]`` one :class:`Interval`. ``measure`` is ``'magnitude'`` or a
    density; ``layer`` is a conv name or :data:`ALL_LAYERS` (per seed, the mean over the
    layers; then over seeds). The kept fractions of a region are divided by the density
    (``kept / d``: 1 = as dense as N:M, 1.2 = 20% denser).
    """

    label: str
    seeds: int
    layers: List[str]
    shapes: Dict[str, Tuple[int, ...]]
    densities: Tuple[float, ...]
    positions: Dict[str, Dict[object, np.ndarray]]
    regions: Dict[str, Dict[object, Dict[str, Interval]]]

    @property
    def measures(self) -> Tuple[object, ...]:
        return ('magnitude', *self.densities)


def aggregate(label: str, runs: Sequence[Sequence[LayerPremise]]) -> PremiseStats:
    """Aggregate the premise of several runs (seeds) of one network: the runs must have the
    same layers and kernel sizes (every layer of a run must share one kernel size for the mean
    over layers)."""
    if not runs:
        raise AnalysisError(f'{label}: no runs to aggregate')
    names = [layer.name for layer in runs[0]]
    for run in runs[1:]:
        if [layer.name for layer in run] != names:
            raise AnalysisError(f'{label}: the runs do not have the same layers')
    densities = tuple(runs[0][0].kept)
    kernels = {layer.kernel for layer in runs[0]}
    if len(kernels) != 1:
        raise AnalysisError(f'{label}: layers of several kernel sizes {sorted(kernels)}; '
                            'analyse one kernel size at a time (--prefix)')
    masks = region_masks(kernels.pop())

    def measure(layer: LayerPremise, what) -> np.ndarray:
        return layer.magnitude if what == 'magnitude' else layer.kept[what] / what

    measures = ('magnitude', *densities)
    per_run: Dict[str, List[Dict[object, np.ndarray]]] = OrderedDict()
    for index, name in enumerate(names):
        per_run[name] = [{what: measure(run[index], what) for what in measures} for run in runs]
    per_run[ALL_LAYERS] = [{what: np.mean([measure(layer, what) for layer in run], axis=0)
                            for what in measures} for run in runs]
    positions, regions = OrderedDict(), OrderedDict()
    for name, values in per_run.items():
        positions[name], regions[name] = {}, {}
        for what in measures:
            stack = np.stack([v[what] for v in values])  # (runs, kh, kw)
            grid = np.empty(stack.shape[1:], object)
            for i, j in np.ndindex(*grid.shape):
                grid[i, j] = Interval.of(stack[:, i, j] * (what if what != 'magnitude' else 1))
            positions[name][what] = grid
            regions[name][what] = OrderedDict(
                (region, Interval.of(stack[:, mask].mean(axis=1)))
                for region, mask in masks.items())
    shapes = {layer.name: layer.shape for layer in runs[0]}
    return PremiseStats(label, len(runs), names, shapes, densities, positions, regions)


def _short(name: str, prefix: str) -> str:
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def premise_table(stats: PremiseStats, prefix: str = 'backbone.') -> str:
    """Markdown: per layer, centre / cross / corners of the relative ``|w|`` and of ``kept/d``
    per density, mean [95% interval] over seeds; then the 3x3 grid of the mean over layers."""
    lines = [f'**{stats.label}** ({stats.seeds} seed{"s" if stats.seeds != 1 else ""}; '
             'mean [95% interval over seeds])', '']
    header = ['layer', 'shape']
    for what in stats.measures:
        head = 'mean abs(w) / layer mean' if what == 'magnitude' else \
            f'kept / d at d = {_density_label(what)}'
        header += [f'{head}: {region}' for region in REGIONS]
    lines.append('| ' + ' | '.join(header) + ' |')
    lines.append('|' + '---|' * len(header))
    for name in [*stats.layers, ALL_LAYERS]:
        shape = 'x'.join(map(str, stats.shapes[name])) if name in stats.shapes else '-'
        cells = [_short(name, prefix) if name != ALL_LAYERS else f'**{ALL_LAYERS}**', shape]
        for what in stats.measures:
            cells += [stats.regions[name][what][region].format(2 if what != 'magnitude' else 3)
                      for region in REGIONS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines.append(f'Per position, {ALL_LAYERS} (rows i, columns j):')
    lines.append('')
    for what in stats.measures:
        title = 'mean abs(w) / layer mean' if what == 'magnitude' else \
            f'kept fraction at density d = {_density_label(what)} (N:M keeps {what:.4f})'
        grid = stats.positions[ALL_LAYERS][what]
        lines.append(f'* {title}:')
        for i in range(grid.shape[0]):
            lines.append('  `' + ' | '.join(grid[i, j].format(3) for j in range(grid.shape[1]))
                         + '`')
    return '\n'.join(lines)


def write_premise_csv(all_stats: Sequence[PremiseStats], path: str) -> str:
    """One row per (set, layer, measure, position or region): mean, interval, values."""
    make_parent_dir(path)
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(('set', 'layer', 'measure', 'where', 'mean', 'ci_low', 'ci_high',
                         'values'))
        for stats in all_stats:
            for name in [*stats.layers, ALL_LAYERS]:
                for what in stats.measures:
                    position_label = ('magnitude' if what == 'magnitude'
                                      else f'kept_at_{what:g}')
                    region_label = ('magnitude' if what == 'magnitude'
                                    else f'kept_over_density_at_{what:g}')
                    grid = stats.positions[name][what]
                    for i, j in np.ndindex(*grid.shape):
                        writer.writerow(_csv_row(stats.label, name, position_label,
                                                 f'({i},{j})', grid[i, j]))
                    for region, value in stats.regions[name][what].items():
                        writer.writerow(_csv_row(stats.label, name, region_label, region,
                                                 value))
    return path


def _csv_row(label, name, measure, where, value: Interval):
    def f(x):
        return '' if x is None else f'{x:.6f}'
    return (label, name, measure, where, f(value.mean), f(value.low), f(value.high),
            ' '.join(f'{v:.6f}' for v in value.values))


def plot_premise(all_stats: Sequence[PremiseStats], path: str, prefix: str = 'backbone.',
                 dpi: int = 80) -> str:
    """One column per data set, one row per measure (relative ``|w|``, then ``kept/d`` per
    density); per layer (and the mean of the layers), centre / cross / corners with their
    95% intervals over seeds. 1 = no preferred position (the dashed line)."""
    from matplotlib.figure import Figure
    if not all_stats:
        raise AnalysisError('nothing to plot')
    measures = all_stats[0].measures
    fig = Figure(figsize=(5.2 * len(all_stats) + 0.5, 2.3 * len(measures) + 0.6),
                 layout='constrained')
    axes = fig.subplots(len(measures), len(all_stats), squeeze=False, sharey='row')
    colours = dict(centre='tab:red', cross='tab:orange', corners='tab:blue')
    offsets = dict(centre=-0.2, cross=0.0, corners=0.2)
    for col, stats in enumerate(all_stats):
        names = [*stats.layers, ALL_LAYERS]
        x = np.arange(len(names), dtype=float)
        x[-1] += 0.6  # set the mean apart
        for row, what in enumerate(measures):
            ax = axes[row, col]
            ax.axhline(1.0, color='grey', linestyle='--', linewidth=0.8)
            for region in REGIONS:
                values = [stats.regions[name][what][region] for name in names]
                means = np.array([v.mean for v in values])
                low = np.array([v.mean if v.low is None else v.low for v in values])
                high = np.array([v.mean if v.high is None else v.high for v in values])
                ax.errorbar(x + offsets[region], means, yerr=[means - low, high - means],
                            fmt='o', markersize=3.5, capsize=2, color=colours[region],
                            label=region, linewidth=1)
            if row == 0:
                ax.set_title(f'{stats.label} ({stats.seeds} seed{"s" if stats.seeds != 1 else ""})',
                             fontsize=10)
            if col == 0:
                ax.set_ylabel('mean |w| / layer mean' if what == 'magnitude' else
                              f'kept / d, d = {_density_label(what)}', fontsize=9)
            ax.set_xticks(x)
            if row == len(measures) - 1:
                ax.set_xticklabels([_short(n, prefix).replace('.conv', '.c')
                                    if n != ALL_LAYERS else 'mean' for n in names],
                                   rotation=60, ha='right', fontsize=7)
            else:
                ax.set_xticklabels([])
            ax.tick_params(labelsize=7)
            ax.grid(axis='y', linewidth=0.3)
    axes[0, 0].legend(fontsize=8, loc='best')
    fig.suptitle('SpRe premise per layer: centre / cross / corners of the kernel, mean and 95% '
                 'interval over seeds\n(kept / d: fraction kept by unstructured magnitude '
                 'pruning at density d, over d; N:M = 1 everywhere)', fontsize=10)
    make_parent_dir(path)
    fig.savefig(path, dpi=dpi)
    return path
