"""Benchmark output: terminal tables, JSON, CSV and a PNG of per-layer speedups."""
import csv
import json
import math
import os.path as osp
from typing import Dict, Optional, Sequence

CSV_COLUMNS = ('name', 'kind', 'weight_shape', 'calls', 'M', 'N', 'K', 'valid', 'dense_ms',
               'dense_iqr_ms', 'sparse_ms', 'sparse_iqr_ms', 'im2col_ms', 'sparse_gemm_ms',
               'dense_gemm_ms', 'sparse_gemm_default_alg_ms', 'alg_ids', 'speedup',
               'gemm_speedup', 'dispatch', 'host_dense_us', 'host_dispatch_us',
               'host_kernel_us', 'eager_dispatch_ms', 'timing_mode', 'host_free',
               'max_abs_err', 'rel_err', 'numerics_ok', 'numerics_ref', 'note')


def layer_row(name: str, kind: str, weight_shape: Sequence[int], calls: list) -> Dict[str, object]:
    """A benchmarked layer's row (every key present; timings filled in by the run, ``None``
    where they could not be measured)."""
    return dict(name=name, kind=kind, weight_shape=list(weight_shape), valid=True, calls=calls,
                dense_ms=None, sparse_ms=None, im2col_ms=None, sparse_gemm_ms=None,
                dense_gemm_ms=None, dense_iqr_ms=None, sparse_iqr_ms=None,
                sparse_gemm_default_alg_ms=None, alg_ids=None, speedup=None,
                gemm_speedup=None, dispatch=None, host_dense_us=None, host_dispatch_us=None,
                host_kernel_us=None, eager_dispatch_ms=None, timing_mode=None, host_free=None,
                note=None)


def no_timing_row(num_sparse: int) -> Dict[str, object]:
    """An end-to-end row without timings (no sparse tensor cores here)."""
    return dict(dense_ms=None, dispatch_ms=None, all_sparse_ms=None, dispatch_speedup=None,
                all_sparse_speedup=None, num_sparse_all=num_sparse,
                note='no timing (needs an sm80+ GPU)')


def _fmt(v, digits=3) -> str:
    if v is None:
        return '-'
    if isinstance(v, float):
        return f'{v:.{digits}f}'
    return str(v)


def csv_row(layer: Dict[str, object]) -> Dict[str, object]:
    calls = layer.get('calls') or []
    num = layer.get('numerics') or {}
    row = {k: layer.get(k) for k in CSV_COLUMNS}
    row.update(weight_shape='x'.join(map(str, layer.get('weight_shape') or [])),
               calls=len(calls),
               M='+'.join(str(c['M']) for c in calls), N=calls[0]['N'] if calls else None,
               K=calls[0]['K'] if calls else None, max_abs_err=num.get('max_abs_err'),
               rel_err=num.get('rel_err'), numerics_ok=num.get('ok'),
               numerics_ref=num.get('reference'),
               alg_ids=';'.join(f'{rows}:{alg}' for rows, alg in
                                (layer.get('alg_ids') or {}).items()) or None)
    return row


def format_layer_table(layers: Sequence[Dict[str, object]]) -> str:
    header = ('layer', 'kind', 'GEMM MxNxK', 'dense ms', 'sparse ms', 'im2col ms', 'speedup',
              'GEMM speedup', 'dispatch', 'host us (dense/dispatch/kernel)', 'timing', 'numerics')
    lines = []
    for layer in layers:
        calls = layer.get('calls') or []
        mnk = ', '.join(f'{c["M"]}x{c["N"]}x{c["K"]}' for c in calls[:2]) + (
            f' (+{len(calls) - 2})' if len(calls) > 2 else '')
        numerics = _numerics(layer.get('numerics'))
        lines.append((layer['name'], layer.get('kind', ''), mnk, _fmt(layer.get('dense_ms')),
                      _fmt(layer.get('sparse_ms')), _fmt(layer.get('im2col_ms')),
                      _fmt(layer.get('speedup'), 2), _fmt(layer.get('gemm_speedup'), 2),
                      _fmt(layer.get('dispatch')), _host(layer), _timing(layer), numerics))
    return _table(header, lines)


def _host(layer) -> str:
    """Host us to issue the layer, the 2:4 GEMM through PyTorch's dispatch, the 2:4 kernel."""
    keys = ('host_dense_us', 'host_dispatch_us', 'host_kernel_us')
    if all(layer.get(k) is None for k in keys):
        return '-'
    return '/'.join(_fmt(layer.get(k), 0) if isinstance(layer.get(k), float) else _fmt(
        layer.get(k)) for k in keys)


def _timing(row) -> str:
    """How the GPU times were taken: the mode, '!' when the host was in a timed region."""
    mode = row.get('timing_mode')
    if not mode:
        return '-'
    mode = mode.replace('cuda_graph', 'graph').replace('pre_enqueued', 'pre-enqueued')
    return mode + ('' if row.get('host_free') else ' (host!)')


def format_e2e_table(e2e: Dict[str, Dict[str, object]]) -> str:
    header = ('scope', 'dense ms', 'dispatch ms', 'all-sparse ms', 'dispatch speedup',
              'all-sparse speedup', 'sparse layers (dispatch/all)', 'host ms (dense)',
              'timing', 'numerics (all-sparse)', 'note')
    lines = [(scope, _fmt(r.get('dense_ms')), _fmt(r.get('dispatch_ms')),
              _fmt(r.get('all_sparse_ms')), _fmt(r.get('dispatch_speedup'), 2),
              _fmt(r.get('all_sparse_speedup'), 2),
              f'{r.get("num_sparse_dispatch", "-")}/{r.get("num_sparse_all", "-")}',
              _fmt(((r.get('timing') or {}).get('dense') or {}).get('host_ms')),
              _e2e_timing(r), _numerics(r.get('numerics_all_sparse')), r.get('note') or '')
             for scope, r in e2e.items()]
    return _table(header, lines)


def _e2e_timing(row) -> str:
    timing = [t for t in (row.get('timing') or {}).values() if t]
    if not timing:
        return '-'
    modes = []
    for t in timing:
        if t.get('mode') and t['mode'] not in modes:
            modes.append(t['mode'])
    return _timing(dict(timing_mode='+'.join(modes),
                        host_free=all(t.get('host_free') for t in timing)))


def _numerics(num) -> str:
    if not num or num.get('ok') is None:
        return '-'
    return f'{"ok" if num["ok"] else "FAIL"} {num["rel_err"]:.1e}'


def _table(header, lines) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = '  '.join('{:<%d}' % w for w in widths)
    return '\n'.join(fmt.format(*row).rstrip() for row in [header, *lines])


def _clean(obj):
    """JSON-safe: NaN/inf -> null, tuples -> lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def build_report(meta: dict, validity: list, layers: list, end_to_end: dict, tolerance: str,
                 timing_reason: Optional[str]) -> Dict[str, object]:
    timed = [lay for lay in layers if lay.get('speedup')]
    summary = dict(
        num_layers_checked=len(validity),
        num_candidates=sum(1 for v in validity if v['candidate']),
        num_valid=sum(1 for v in validity if v['valid']),
        num_valid_in_scope=sum(1 for v in validity if v['valid'] and v['in_scope']),
        num_benchmarked=len(layers),
        num_numerics_ok=sum(1 for lay in layers if (lay.get('numerics') or {}).get('ok')),
        num_faster_sparse=sum(1 for lay in timed if lay['speedup'] > 1.0) if timed else None,
        sum_dense_ms=sum(lay['dense_ms'] for lay in timed) if timed else None,
        sum_sparse_ms=sum(lay['sparse_ms'] for lay in timed) if timed else None)
    return _clean(dict(meta=meta, timings_available=timing_reason is None,
                       timing_unavailable_reason=timing_reason, tolerance=tolerance,
                       validity=validity, layers=layers, end_to_end=end_to_end,
                       summary=summary))


def write_json(report: dict, path: str) -> str:
    with open(path, 'w') as f:
        json.dump(report, f, indent=2)
    return path


def write_csv(layers: Sequence[Dict[str, object]], path: str) -> str:
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for layer in layers:
            writer.writerow({k: ('' if v is None else v) for k, v in csv_row(layer).items()})
    return path


def write_plot(layers: Sequence[Dict[str, object]], path: str, title: str = '',
               reason: Optional[str] = None) -> str:
    """Bar chart of per-layer speedups (whole layer incl. im2col, and GEMM only). Without
    timings it draws no bars, only the reason, so no number is ever invented."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    timed = [lay for lay in layers if lay.get('speedup')]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(timed) + 2), 4.5))
    if timed:
        xs = list(range(len(timed)))
        ax.bar([x - 0.2 for x in xs], [lay['speedup'] for lay in timed], width=0.4,
               label='layer (im2col incl.)',
               color=['tab:green' if lay['speedup'] > 1 else 'tab:red' for lay in timed])
        ax.bar([x + 0.2 for x in xs], [lay.get('gemm_speedup') or 0 for lay in timed],
               width=0.4, label='GEMM only', color='tab:gray', alpha=0.6)
        ax.axhline(1.0, color='k', lw=0.8)
        ax.axhline(2.0, color='k', lw=0.8, ls='--', label='2x ceiling')
        ax.set_xticks(xs)
        ax.set_xticklabels([lay['name'] for lay in timed], rotation=90, fontsize=6)
        ax.set_ylabel('speedup (dense / 2:4 sparse)')
        ax.legend(fontsize=7)
    else:
        ax.axis('off')
        ax.text(0.5, 0.5, 'No timings recorded.\n' + (reason or ''), ha='center', va='center',
                wrap=True, fontsize=9)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(report: dict, out_dir: str, stem: str = 'benchmark_sparse') -> Dict[str, str]:
    title = str(report['meta'].get('title', ''))
    return dict(json=write_json(report, osp.join(out_dir, stem + '.json')),
                csv=write_csv(report['layers'], osp.join(out_dir, stem + '.csv')),
                png=write_plot(report['layers'], osp.join(out_dir, stem + '_speedup.png'), title,
                               report.get('timing_unavailable_reason')))
