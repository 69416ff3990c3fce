"""Text output of the per-position analysis: a printed table, ``S`` as JSON, and a CSV."""
import csv
import json
from collections import OrderedDict
from typing import Sequence

import numpy as np

from ._files import make_parent_dir
from .positions import NOISE_Z, LayerAnalysis, SkippedLayer, summarize

__all__ = ['CSV_FIELDS', 'format_table', 'write_spatial_json', 'write_csv']


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
    make_parent_dir(path)
    with open(path, 'w') as f:
        json.dump(data, f, indent=2)
    return path


CSV_FIELDS = ('layer', 'kernel', 'i', 'j', 'unstructured_sparsity', 'nm_sparsity', 'S',
              'main_density', 'rep_density', 'block_density', 'nm_source', 'S_source')


def write_csv(layers: Sequence[LayerAnalysis], path: str) -> str:
    """One row per (layer, i, j), then ``overall[kxk]`` rows (``S`` there is the frequency)."""
    make_parent_dir(path)
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
