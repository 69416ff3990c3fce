"""Per-kernel-position sparsity of k x k convs: unstructured vs N:M vs SpRe (SPEC section 4).

SpRe's observation: N:M removes exactly ``p = 1 - N/M`` of the weights at every kernel position
``(i, j)``, while unstructured magnitude pruning at the same overall rate removes less at some
positions (typically the centre and the cross) and more elsewhere. SpRe gives the positions that
unstructured pruning keeps denser (its spatial mask ``S``) an extra branch during training.

This module measures that on a state dict, with no model built:

* :func:`analyze_state_dict` finds every ``k x k`` conv (``k > 1``) under a prefix and returns a
  :class:`LayerAnalysis` per layer (per-position sparsity of the three schemes, ``S``, and the
  training-time density of the SpRe block);
* :func:`summarize` averages over layers with the same kernel size;
* :func:`plot_overview` / :func:`plot_layers` draw PNGs, :func:`write_spatial_json` /
  :func:`write_csv` write the numbers, :func:`format_table` prints a table.

Plotting uses matplotlib's object API (``Figure`` + Agg), never ``pyplot``, so importing or
calling it does not change the user's matplotlib backend.
"""
import csv
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import SpreMMDetError
from ..sparsity.nm import check_nm, check_nm_tensor, nm_incompatibility, nm_mask, unstructured_mask
from ..sparsity.spre import spatial_mask

__all__ = [
    'AnalysisError', 'LayerAnalysis', 'KernelSummary', 'SkippedLayer', 'position_sparsity',
    'unstructured_position_sparsity', 'nm_position_sparsity', 'analyze_layer', 'find_kxk_convs',
    'analyze_state_dict', 'extract_state_dict', 'summarize', 'format_table',
    'write_spatial_json', 'write_csv', 'plot_overview', 'plot_layers', 'suggest_prefixes',
    'synthetic_weight', 'synthetic_state_dict'
]

MASK_SUFFIX = '.sparsity.mask'
SPATIAL_SUFFIX = '.spatial'
REP_SUFFIX = '.weight_rep'


#: Layers whose per-position deviation stays below this many sigmas are flagged as noise.
NOISE_Z = 4.0


class AnalysisError(SpreMMDetError, ValueError):
    """A user-facing problem with the input (reported without a traceback by the tool)."""


# --------------------------------------------------------------------------------------
# Per-position computations
# --------------------------------------------------------------------------------------
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
        is_spre: the checkpoint has a ``weight_rep`` for this conv.
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
    is_spre: bool = False
    notes: List[str] = field(default_factory=list)

    @property
    def kernel(self) -> Tuple[int, int]:
        return tuple(self.shape[2:])

    @property
    def rate(self) -> float:
        """The overall pruning rate ``p = 1 - n/m``."""
        return 1.0 - self.n / self.m

    @property
    def main_density(self) -> np.ndarray:
        return 1.0 - self.nm

    @property
    def rep_density(self) -> np.ndarray:
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
        return bool(np.array_equal(self.spatial, self.spatial_computed))


@dataclass
class SkippedLayer:
    """A ``k x k`` conv that could not be analysed, and why."""

    name: str
    shape: Tuple[int, ...]
    reason: str


def analyze_layer(name: str, weight: torch.Tensor, n: int, m: int,
                  mask: Optional[torch.Tensor] = None, spatial: Optional[torch.Tensor] = None,
                  weight_rep: Optional[torch.Tensor] = None) -> LayerAnalysis:
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
        is_spre=weight_rep is not None, notes=notes)


# --------------------------------------------------------------------------------------
# State dicts
# --------------------------------------------------------------------------------------
def extract_state_dict(checkpoint) -> Mapping[str, torch.Tensor]:
    """The model state dict of an mmengine runner checkpoint, or the plain state dict itself."""
    if isinstance(checkpoint, Mapping):
        for key in ('state_dict', 'model', 'module'):
            inner = checkpoint.get(key)
            if isinstance(inner, Mapping) and any(
                    isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
        if any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
    raise AnalysisError('The checkpoint holds no state dict: expected an mmengine checkpoint '
                        "(a dict with 'state_dict') or a plain {name: tensor} state dict, got "
                        f'{type(checkpoint).__name__}'
                        + (f" with keys {sorted(checkpoint)[:8]}" if isinstance(checkpoint, Mapping)
                           else ''))


def _is_kxk(tensor) -> bool:
    return (isinstance(tensor, torch.Tensor) and tensor.dim() == 4
            and tensor.shape[2] * tensor.shape[3] > 1)


def find_kxk_convs(state_dict: Mapping[str, torch.Tensor], prefix: str = '') -> List[str]:
    """Names (without ``.weight``) of the ``k x k`` conv weights (``k > 1``) under ``prefix``."""
    return [key[:-len('.weight')] for key, value in state_dict.items()
            if key.startswith(prefix) and key.endswith('.weight') and _is_kxk(value)]


def suggest_prefixes(state_dict: Mapping[str, torch.Tensor], max_items: int = 5) -> List[str]:
    """Top-level prefixes (``'backbone.'``, ...) that hold ``k x k`` convs, most first."""
    counts: Dict[str, int] = {}
    for name in find_kxk_convs(state_dict, ''):
        head = name.split('.', 1)[0] + '.' if '.' in name else ''
        counts[head] = counts.get(head, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return [f'{p!r} ({c} conv{"s" if c != 1 else ""})' for p, c in ranked[:max_items]]


def analyze_state_dict(state_dict: Mapping[str, torch.Tensor], n: int = 2, m: int = 4,
                       prefix: str = 'backbone.', progress: bool = False
                       ) -> Tuple[List[LayerAnalysis], List[SkippedLayer]]:
    """Analyse every ``k x k`` conv under ``prefix``; returns ``(analysed, skipped)``.

    Layers that cannot be N:M (e.g. a 7x7 stem with 3 input channels) are skipped with a reason.

    Raises:
        AnalysisError: if there is no ``k x k`` conv under ``prefix`` (the message suggests one).
    """
    n, m = check_nm(n, m)
    names = find_kxk_convs(state_dict, prefix)
    if not names:
        hints = suggest_prefixes(state_dict)
        hint = (' k x k convs were found under ' + ', '.join(hints) + '; pass one with --prefix'
                ' (or --prefix "" for the whole model).') if hints else (
            ' The checkpoint has no 4-D conv weight with a kernel larger than 1x1 at all.')
        raise AnalysisError(f'No k x k conv weights (k > 1) under prefix {prefix!r}.' + hint)
    iterator: Iterable[str] = names
    if progress:
        try:
            from tqdm import tqdm
            iterator = tqdm(names, desc='layers', unit='layer', leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
    analysed, skipped = [], []
    for name in iterator:
        weight = state_dict[name + '.weight']
        reason = nm_incompatibility(weight.shape, m)
        if reason is not None:
            skipped.append(SkippedLayer(name, tuple(weight.shape), f'not N:M-able: {reason}'))
            continue
        analysed.append(analyze_layer(
            name, weight, n, m, mask=state_dict.get(name + MASK_SUFFIX),
            spatial=state_dict.get(name + SPATIAL_SUFFIX),
            weight_rep=state_dict.get(name + REP_SUFFIX)))
    return analysed, skipped


# --------------------------------------------------------------------------------------
# Aggregation and text
# --------------------------------------------------------------------------------------
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


def _positions(mask: np.ndarray) -> str:
    pos = [f'({i},{j})' for i, j in zip(*np.nonzero(mask))]
    return ' '.join(pos) if pos else '-'


def format_table(layers: Sequence[LayerAnalysis], skipped: Sequence[SkippedLayer] = (),
                 prefix: str = '') -> str:
    """A plain-text table: one line per layer, then the per-kernel averages and notes."""
    if not layers:
        return 'no layers analysed'
    n, m = layers[0].n, layers[0].m
    p = 1.0 - n / m
    names = [la.name[len(prefix):] if prefix and la.name.startswith(prefix) else la.name
             for la in layers]
    width = max(5, *(len(x) for x in names))
    head = (f'{"layer":<{width}}  {"kernel":<6}  {"unstructured min..max":<21}  {"N:M":>5}  '
            f'{"S=1":>5}  {"S from":<11}  S = 1 at (i,j)')
    lines = [f'Per-position sparsity, {n}:{m} (rate p = {p:.3f}); unstructured = magnitude '
             f'pruning at p over each layer', head, '-' * len(head)]
    for name, la in zip(names, layers):
        src = la.spatial_source + ('' if la.spatial_agrees else '*')
        kernel = f'{la.kernel[0]}x{la.kernel[1]}'
        span = f'{la.unstructured.min():.3f} .. {la.unstructured.max():.3f}'
        count = f'{int(la.spatial.sum())}/{la.spatial.size}'
        lines.append(f'{name:<{width}}  {kernel:<6}  {span:<21}  {la.nm.mean():>5.3f}  '
                     f'{count:>5}  {src:<11}  {_positions(la.spatial)}')
    lines.append('-' * len(head))
    for summary in summarize(layers):
        kh, kw = summary.kernel
        lines.append(f'{summary.label}: {summary.num_layers} layers; mean unstructured sparsity '
                     'per position (rows i, columns j):')
        for i in range(kh):
            lines.append('    ' + ' '.join(f'{v:.3f}' for v in summary.unstructured[i]))
        lines.append('  fraction of layers with S = 1 per position:')
        for i in range(kh):
            lines.append('    ' + ' '.join(f'{v:.3f}' for v in summary.spatial_frequency[i]))
    noisy = [la for la in layers if la.noise_z < NOISE_Z]
    if noisy:
        lines.append(f'note: in {len(noisy)}/{len(layers)} layers the per-position differences are '
                     f'within random noise (< {NOISE_Z:g} sigma of a random mask), so S is '
                     'decided by chance there (untrained or random weights?). Trained convs '
                     'usually keep the centre and the cross clearly denser.')
    if any(not la.spatial_agrees for la in layers):
        lines.append('* stored S differs from spatial_mask of the stored weight (S is refreshed '
                     'every spatial_interval iterations; the stored S is used).')
    for la in layers:
        for note in la.notes:
            lines.append(f'note: {la.name}: {note}')
    for skip in skipped:
        lines.append(f'skipped: {skip.name} {tuple(skip.shape)}: {skip.reason}')
    return '\n'.join(lines)


def write_spatial_json(layers: Sequence[LayerAnalysis], path: str) -> str:
    """Write ``{layer: S as a kh x kw list of 0/1}`` to ``path``."""
    data = OrderedDict((la.name, la.spatial.astype(int).tolist()) for la in layers)
    _makedirs_for(path)
    with open(path, 'w') as f:
        json.dump(data, f, indent=2)
    return path


CSV_FIELDS = ('layer', 'kernel', 'i', 'j', 'unstructured_sparsity', 'nm_sparsity', 'S',
              'main_density', 'rep_density', 'block_density', 'nm_source', 'S_source')


def write_csv(layers: Sequence[LayerAnalysis], path: str) -> str:
    """One row per (layer, i, j), then ``overall[kxk]`` rows (``S`` there is the frequency)."""
    _makedirs_for(path)
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for la in layers:
            kh, kw = la.kernel
            for i in range(kh):
                for j in range(kw):
                    writer.writerow([
                        la.name, f'{kh}x{kw}', i, j, _f(la.unstructured[i, j]), _f(la.nm[i, j]),
                        int(la.spatial[i, j]), _f(la.main_density[i, j]),
                        _f(la.rep_density[i, j]), _f(la.block_density[i, j]), la.nm_source,
                        la.spatial_source])
        for s in summarize(layers):
            kh, kw = s.kernel
            for i in range(kh):
                for j in range(kw):
                    main = 1.0 - s.nm[i, j]
                    writer.writerow([
                        s.label, f'{kh}x{kw}', i, j, _f(s.unstructured[i, j]), _f(s.nm[i, j]),
                        _f(s.spatial_frequency[i, j]), _f(main),
                        _f(s.block_density[i, j] - main), _f(s.block_density[i, j]), '', ''])
    return path


def _f(x) -> str:
    return f'{float(x):.6f}'


def _makedirs_for(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------
def _sparsity_norm(p: float, arrays: Iterable[np.ndarray]):
    """A diverging norm centred at ``p``: blue = denser than N:M, red = sparser."""
    from matplotlib.colors import TwoSlopeNorm
    spread = max([float(np.abs(a - p).max()) for a in arrays] + [0.02])
    spread = min(1.0, math.ceil(spread * 20) / 20)  # round up to 0.05 for tidy ticks
    vmin, vmax = max(0.0, p - spread), min(1.0, p + spread)
    if vmin >= p:
        vmin = p - 1e-6
    if vmax <= p:
        vmax = p + 1e-6
    return TwoSlopeNorm(vcenter=p, vmin=vmin, vmax=vmax)


def _fmt_for(norm, p: float) -> str:
    """Three decimals when all values lie close to ``p`` (else 0.499 would read as 0.50)."""
    return '{:.3f}' if max(norm.vmax - p, p - norm.vmin) <= 0.05 + 1e-9 else '{:.2f}'


def _heatmap(ax, values: np.ndarray, cmap, norm, fmt: str = '{:.2f}', fontsize: float = 11,
             outline: Optional[np.ndarray] = None):
    """Draw ``values`` with an annotation per cell; outline cells where ``outline`` is true."""
    from matplotlib.patches import Rectangle
    image = ax.imshow(values, cmap=cmap, norm=norm, interpolation='nearest')
    kh, kw = values.shape
    for i in range(kh):
        for j in range(kw):
            r, g, b, _ = image.cmap(image.norm(values[i, j]))
            luminance = 0.299 * r + 0.587 * g + 0.114 * b
            ax.text(j, i, fmt.format(values[i, j]), ha='center', va='center', fontsize=fontsize,
                    color='black' if luminance > 0.5 else 'white')
            if outline is not None and outline[i, j]:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor='black',
                                       linewidth=3.0))
    ax.set_xticks(range(kw))
    ax.set_yticks(range(kh))
    ax.tick_params(labelsize=8, length=0)
    ax.set_xlabel('j', fontsize=8, labelpad=1)
    ax.set_ylabel('i', fontsize=8, labelpad=6, rotation=0, va='center')
    return image


def _annotation_size(kernel: Tuple[int, int], base: float = 11) -> float:
    return max(6.0, base * (3.0 / max(kernel)) ** 0.6)


def plot_overview(layers: Sequence[LayerAnalysis], path: str, title: str = '') -> str:
    """One row per kernel size: unstructured | N:M | S frequency | SpRe block density."""
    from matplotlib.figure import Figure
    summaries = summarize(layers)
    if not summaries:
        raise AnalysisError('nothing to plot: no layers analysed')
    n, m = layers[0].n, layers[0].m
    p = 1.0 - n / m
    rows = len(summaries)
    fig = Figure(figsize=(17, 4.4 * rows + 0.8), layout='constrained')
    axes = fig.subplots(rows, 4, squeeze=False)
    norm = _sparsity_norm(p, [a for s in summaries for a in (s.unstructured, s.nm)])
    fmt = _fmt_for(norm, p)
    for row, s in zip(axes, summaries):
        size = _annotation_size(s.kernel)
        suffix = (f'\n{s.kernel[0]}x{s.kernel[1]}, mean over {s.num_layers} '
                  f'layer{"s" if s.num_layers != 1 else ""}')
        im = _heatmap(row[0], s.unstructured, 'RdBu_r', norm, fmt=fmt, fontsize=size)
        row[0].set_title(f'(a) unstructured magnitude, rate {p:.2f}{suffix}', fontsize=10)
        _heatmap(row[1], s.nm, 'RdBu_r', norm, fmt=fmt, fontsize=size)
        row[1].set_title(f'(b) {n}:{m} (= {p:.2f} at every position){suffix}', fontsize=10)
        bar = fig.colorbar(im, ax=row[:2].tolist(), shrink=0.85, pad=0.02)
        bar.set_label(f'sparsity (pruned fraction); centre = {p:.2f}\n'
                      'blue: denser than N:M, red: sparser', fontsize=9)
        im = _heatmap(row[2], s.spatial_frequency, 'Greens', _linear(0, 1), fontsize=size)
        row[2].set_title(f'(c) SpRe: how often S = 1 (fraction of layers){suffix}', fontsize=10)
        bar = fig.colorbar(im, ax=row[2], shrink=0.85, pad=0.02)
        bar.set_label('fraction of layers with S = 1', fontsize=9)
        top = 2 * n / m
        im = _heatmap(row[3], s.block_density, 'Purples', _linear(0, top), fontsize=size,
                      outline=s.spatial_frequency >= 0.5)
        row[3].set_title(f'(d) SpRe training-time block density{suffix}\n'
                         '(outlined: S = 1 in at least half the layers)', fontsize=10)
        bar = fig.colorbar(im, ax=row[3], shrink=0.85, pad=0.02)
        bar.set_label(f'non-zeros per position / dense\n({n / m:.2f} main, +{n / m:.2f} '
                      'rep where S = 1)', fontsize=9)
    fig.suptitle(title or f'Per-position sparsity of k x k convs: unstructured vs {n}:{m} vs SpRe',
                 fontsize=13)
    _makedirs_for(path)
    fig.savefig(path, dpi=110)
    return path


def _linear(vmin: float, vmax: float):
    from matplotlib.colors import Normalize
    return Normalize(vmin=vmin, vmax=vmax)


def plot_layers(layers: Sequence[LayerAnalysis], path: str, prefix: str = '',
                max_per_page: int = 36, ncols: int = 6) -> List[str]:
    """Per-layer grid of unstructured per-position sparsity with ``S = 1`` cells outlined.

    More than ``max_per_page`` layers are split over ``<path stem>_pN.png`` pages. Returns the
    paths written.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    if not layers:
        raise AnalysisError('nothing to plot: no layers analysed')
    n, m = layers[0].n, layers[0].m
    p = 1.0 - n / m
    norm = _sparsity_norm(p, [la.unstructured for la in layers])
    fmt = _fmt_for(norm, p)
    pages = [layers[i:i + max_per_page] for i in range(0, len(layers), max_per_page)]
    stem, ext = os.path.splitext(path)
    paths = []
    for index, page in enumerate(pages):
        cols = math.ceil(len(page) / math.ceil(len(page) / ncols))  # balanced rows
        rows = math.ceil(len(page) / cols)
        fig = Figure(figsize=(2.9 * cols + 1.6, 3.2 * rows + 1.2), layout='constrained')
        axes = fig.subplots(rows, cols, squeeze=False)
        image = None
        for ax, la in zip(axes.flat, page):
            image = _heatmap(ax, la.unstructured, 'RdBu_r', norm, fmt=fmt,
                             fontsize=_annotation_size(la.kernel, 10), outline=la.spatial > 0)
            name = la.name[len(prefix):] if prefix and la.name.startswith(prefix) else la.name
            ax.set_title(_wrap(name, 30) + f'\n{la.shape[0]}x{la.shape[1]}x{la.kernel[0]}x'
                         f'{la.kernel[1]}, S=1: {int(la.spatial.sum())}/{la.spatial.size}',
                         fontsize=8)
        for ax in list(axes.flat)[len(page):]:
            ax.set_visible(False)
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, pad=0.01)
        bar.set_label(f'unstructured sparsity at rate {p:.2f} (centre)\nblue: denser than '
                      f'{n}:{m}, red: sparser', fontsize=9)
        fig.legend(handles=[Patch(facecolor='none', edgecolor='black', linewidth=3,
                                  label='S = 1 (SpRe extra branch)')],
                   loc='outside lower center', fontsize=9, frameon=False)
        page_note = f' (page {index + 1}/{len(pages)})' if len(pages) > 1 else ''
        fig.suptitle(f'Unstructured magnitude pruning per kernel position, {n}:{m} rate '
                     f'{p:.2f}{page_note}', fontsize=12)
        out = path if len(pages) == 1 else f'{stem}_p{index + 1}{ext or ".png"}'
        _makedirs_for(out)
        fig.savefig(out, dpi=100)
        paths.append(out)
    return paths


def _wrap(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    parts, line = [], ''
    for piece in text.split('.'):
        token = piece if not line else '.' + piece
        if line and len(line) + len(token) > width:
            parts.append(line + '.')
            line = piece
        else:
            line += token
    parts.append(line)
    return '\n'.join(parts)


# --------------------------------------------------------------------------------------
# Synthetic weights (tests, and the tool's --demo without any checkpoint)
# --------------------------------------------------------------------------------------
def synthetic_weight(out_channels: int = 32, in_channels: int = 32, kernel: int = 3,
                     centre: float = 3.0, cross: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Gaussian conv weight whose magnitudes are scaled up at the centre and on the cross.

    Such a weight mimics what trained 3x3 convs typically look like: unstructured pruning keeps
    more weights at the centre and the cross, so those positions get ``S = 1``.
    """
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_channels, in_channels, kernel, kernel, generator=gen)
    scale = torch.ones(kernel, kernel)
    mid = kernel // 2
    scale[mid, :] = cross
    scale[:, mid] = cross
    scale[mid, mid] = centre
    return weight * scale


def synthetic_state_dict(num_layers: int = 8, n: int = 2, m: int = 4, prefix: str = 'backbone.',
                         seed: int = 0) -> 'OrderedDict[str, torch.Tensor]':
    """A small SpRe-like backbone state dict: 3x3 convs with centre/cross-heavy weights.

    Odd layers look like SpRe training checkpoints (``weight_rep``, ``spatial``,
    ``sparsity.mask``), even layers like plain dense convs; a 7x7 stem with 3 input channels
    and 1x1 convs are included as things the analysis must skip.
    """
    gen = torch.Generator().manual_seed(seed)
    state: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    state[prefix + 'conv1.weight'] = torch.randn(16, 3, 7, 7, generator=gen)
    for k in range(num_layers):
        name = f'{prefix}layer{k // 2 + 1}.{k % 2}.conv2'
        channels = 16 * 2 ** min(k // 4, 3)
        centre, cross = 2.0 + 0.25 * k, 1.4 + 0.1 * k
        weight = synthetic_weight(channels, channels, 3, centre, cross, seed + k)
        state[name + '.weight'] = weight
        state[name.replace('conv2', 'conv1') + '.weight'] = torch.randn(channels, channels, 1, 1,
                                                                         generator=gen)
        if k % 2:
            state[name + '.weight_rep'] = torch.randn_like(weight)
            state[name + '.spatial'] = spatial_mask(weight, n, m)
            state[name + '.sparsity.mask'] = nm_mask(weight, n, m)
    return state
