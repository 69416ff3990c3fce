"""PNG plots of the per-position analysis: averages per kernel size and one heatmap per layer.

Plotting uses matplotlib's object API (``Figure`` + Agg), never ``pyplot``, so importing or
calling it does not change the user's matplotlib backend.
"""
import math
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ._files import make_parent_dir
from .positions import AnalysisError, LayerAnalysis, summarize

__all__ = ['plot_overview', 'plot_layers']


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
    make_parent_dir(path)
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
        make_parent_dir(out)
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
