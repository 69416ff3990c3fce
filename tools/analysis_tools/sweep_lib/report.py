"""The sweep's outputs: summary tables, accuracy-vs-sparsity plot, and SpRe's central
observation measured on the final deploy kernels (per-kernel-position sparsity and weight)."""
import json
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .grid import DETECTION_TASKS, METHODS, STAGE_DIRS
from .stats import mean_interval, paired_difference, summarize

#: (a, b) pairs whose paired difference the report lists, the first being the question asked
COMPARISONS = (('spre', 'srste'), ('spre_lbc', 'lbc'), ('lbc', 'srste'), ('srste', 'dense'),
               ('unstructured', 'srste'), ('spre', 'unstructured'))
METHOD_ORDER = ('dense', 'unstructured', 'asp', 'srste', 'spre', 'lbc', 'spre_lbc', 'ip_srste')


def _density(pattern: str) -> float:
    if pattern == 'dense':
        return 1.0
    n, m = (int(x) for x in pattern.split(':'))
    return n / m


def _patterns(records: Sequence[dict]) -> List[str]:
    found = {r['pattern'] for r in records if r['pattern'] != 'dense'}
    return sorted(found, key=_density, reverse=True)


def _fmt(row: Optional[dict], scale: float = 1.0) -> str:
    if row is None:
        return '-'
    if row['std'] is None:  # one seed: no spread to state
        return f'{row["mean"] * scale:.2f} (1 seed)'
    text = f'{row["mean"] * scale:.2f} ± {row["std"] * scale:.2f}'
    if row.get('ci_low') is not None:
        text += f' [{row["ci_low"] * scale:.2f}, {row["ci_high"] * scale:.2f}]'
    return text


def tables(records: Sequence[dict], metric: str, label: str) -> str:
    """Markdown: mean ± std [95% interval] per method and pattern; paired differences."""
    rows = {(r['method'], r['pattern']): r for r in summarize(records, metric)}
    patterns = _patterns(records)
    methods = [m for m in METHOD_ORDER if any(k[0] == m for k in rows)]
    lines = [f'| {label} | ' + ' | '.join(patterns) + ' |',
             '|---|' + '---|' * len(patterns)]
    for method in methods:
        if method == 'dense':
            cells = [_fmt(rows.get(('dense', 'dense')))] * len(patterns)
        else:
            cells = [_fmt(rows.get((method, p))) for p in patterns]
        seeds = max((len(rows[k]['seeds']) for k in rows if k[0] == method), default=0)
        lines.append(f'| {method} ({seeds} seed{"s" if seeds != 1 else ""}) | '
                     + ' | '.join(cells) + ' |')
    lines += ['', f'Paired differences of {label} (same seed = same initial weights, data order '
              'and schedule), mean [95% interval]; * = the interval excludes 0:', '',
              '| difference | ' + ' | '.join(patterns) + ' |', '|---|' + '---|' * len(patterns)]
    for a, b in COMPARISONS:
        cells = []
        for pattern in patterns:
            diff = paired_difference(
                [dict(r, pattern=pattern) if r['method'] == 'dense' else r for r in records],
                metric, a, b, pattern)
            if diff is None:
                cells.append('-')
            elif diff['ci_low'] is None:
                cells.append(f'{diff["mean"]:+.2f} (1 seed)')
            else:
                cells.append(f'{diff["mean"]:+.2f} [{diff["ci_low"]:+.2f}, '
                             f'{diff["ci_high"]:+.2f}]' + (' *' if diff['excludes_zero'] else ''))
        if any(c != '-' for c in cells):
            lines.append(f'| {a} − {b} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot_metric(records: Sequence[dict], metric: str, label: str, path: str) -> str:
    """``metric`` against density (N/M, log scale), one line per method (mean ± std)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    rows = summarize(records, metric)
    figure = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for method in METHOD_ORDER:
        mine = sorted((r for r in rows if r['method'] == method),
                      key=lambda r: _density(r['pattern']))
        if not mine:
            continue
        if method == 'dense':
            ax.axhline(mine[0]['mean'], color='k', ls='--', lw=1,
                       label=f'dense ({mine[0]["mean"]:.1f})')
            if mine[0]['std'] is not None:
                ax.axhspan(mine[0]['mean'] - mine[0]['std'], mine[0]['mean'] + mine[0]['std'],
                           color='k', alpha=0.08)
            continue
        x = [_density(r['pattern']) for r in mine]
        ax.errorbar(x, [r['mean'] for r in mine], yerr=[r['std'] or 0.0 for r in mine], marker='o',
                    capsize=3, label=method)
    patterns = _patterns(records)
    ax.set_xscale('log', base=2)
    ax.set_xticks([_density(p) for p in patterns], labels=patterns)
    ax.set_xlabel('N:M pattern (density N/M)')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


# ------------------------------------------------------------- per-kernel-position analysis
def kernel_positions(deploy_model: torch.nn.Module, prefix: str = 'backbone.layer') -> dict:
    """Per kernel position of the 3x3 convs under ``prefix`` of a deploy model (the kernels
    that run after re-parameterization): the pruned fraction and the mean |weight| relative to
    the layer's mean |weight|, each averaged over layers."""
    zeros, weights = [], []
    for name, module in deploy_model.named_modules():
        if (name.startswith(prefix) and isinstance(module, torch.nn.Conv2d)
                and module.kernel_size == (3, 3)):
            kernel = module.weight.detach().float()
            zeros.append((kernel == 0).float().mean((0, 1)))
            magnitude = kernel.abs().mean((0, 1))
            weights.append(magnitude / magnitude.mean())
    return dict(layers=len(zeros), pruned=torch.stack(zeros).mean(0).tolist(),
                relative_weight=torch.stack(weights).mean(0).tolist())


def deploy_kernels(record: dict) -> dict:
    """:func:`kernel_positions` of a finished classification cell's final checkpoint."""
    from spre_mmdet.checkpoint import load_checkpoint_checked
    from spre_mmdet.deploy import build_model
    from spre_mmdet.sparsity import reparameterize

    from .grid import NATURAL_METHODS, TASK_OPTIONS
    from .run import last_checkpoint, load_config
    configs = METHODS if record['task'] == 'cls' else NATURAL_METHODS
    cfg = load_config(configs[record['method']], TASK_OPTIONS.get(record['task'], []))
    cfg.model.backbone.sparsity.update(n=record['n'], m=record['m'])
    model = build_model(cfg)
    load_checkpoint_checked(model, last_checkpoint(record['work_dir']))
    return kernel_positions(reparameterize(model.eval()))


#: 3x3 positions by their distance from the centre (rows i, columns j)
REGIONS = {'centre': [(1, 1)], 'cross': [(0, 1), (1, 0), (1, 2), (2, 1)],
           'corners': [(0, 0), (0, 2), (2, 0), (2, 2)]}


def spatial_share(state_dict: Dict[str, torch.Tensor]) -> List[List[float]]:
    """Per 3x3 position, the share of a SpRe model's layers whose spatial mask ``S`` (the
    ``<conv>.spatial`` buffers of a checkpoint) holds that position."""
    masks = [v.float().reshape(3, 3) for k, v in state_dict.items()
             if k.endswith('.spatial') and v.numel() == 9]
    if not masks:
        raise ValueError('The state dict has no 3x3 SpRe spatial masks (<conv>.spatial).')
    return torch.stack(masks).mean(0).tolist()


def final_run_dir(record: dict) -> str:
    """The folder of a cell's last training run: its stage 2 for a two-stage detection cell,
    the cell itself otherwise."""
    if record['task'] in DETECTION_TASKS:
        return osp.join(record['work_dir'], STAGE_DIRS[1])
    return record['work_dir']


def spre_structure(records: Sequence[dict]) -> Dict[str, dict]:
    """Where SpRe's ``S`` lands and how strong its branch is at the end of training, per
    pattern over the finished SpRe cells' seeds: the 3x3 share of layers whose ``S`` holds each
    position (mean over seeds), the centre / cross / corner shares and the final logged
    ``branch_ratio`` (``||K_rep|| / ||K_main||`` averaged over layers) and ``spatial_changes``
    (entries of ``S`` flipped per layer over the run), each with its 95% interval over seeds."""
    from spre_mmdet.checkpoint import state_dict_of

    from .run import last_checkpoint, last_metrics
    by_pattern: Dict[str, List[dict]] = {}
    for record in records:
        if record['method'] != 'spre' or record.get('error'):
            continue
        run_dir = final_run_dir(record)
        checkpoint = last_checkpoint(run_dir)
        share = np.array(spatial_share(state_dict_of(
            torch.load(checkpoint, map_location='cpu', weights_only=False), checkpoint)))
        entry = {region: float(np.mean([share[p] for p in positions]))
                 for region, positions in REGIONS.items()}
        logged = last_metrics(run_dir, 'spre/branch_ratio')
        entry.update(share=share, branch_ratio=logged['spre/branch_ratio'],
                     spatial_changes=logged['spre/spatial_changes'])
        by_pattern.setdefault(record['pattern'], []).append(entry)
    result = {}
    for pattern, entries in by_pattern.items():
        summary = dict(seeds=len(entries),
                       share=np.mean([e['share'] for e in entries], 0).round(4).tolist())
        for key in (*REGIONS, 'branch_ratio', 'spatial_changes'):
            mean, _, low, high = mean_interval([e[key] for e in entries])
            summary[key] = dict(mean=mean, ci_low=low, ci_high=high)
        result[pattern] = summary
    return result


def spre_structure_table(structure: Dict[str, dict]) -> str:
    """Markdown of :func:`spre_structure`."""
    def fmt(value):
        if value['ci_low'] is None:
            return f'{value["mean"]:.2f}'
        return f'{value["mean"]:.2f} [{value["ci_low"]:.2f}, {value["ci_high"]:.2f}]'

    lines = ['| pattern | seeds | S holds: centre | cross | corners | branch ratio | '
             'S flips per layer | S share per position (rows) |',
             '|---|---|---|---|---|---|---|---|']
    for pattern in sorted(structure, key=_density, reverse=True):
        entry = structure[pattern]
        grid = ' / '.join(' '.join(f'{v:.2f}' for v in row) for row in entry['share'])
        lines.append(f'| {pattern} | {entry["seeds"]} | ' + ' | '.join(
            fmt(entry[k]) for k in (*REGIONS, 'branch_ratio', 'spatial_changes'))
            + f' | {grid} |')
    return '\n'.join(lines)


def plot_kernel_positions(analysis: Dict[str, Dict[str, dict]], path: str) -> str:
    """Heat maps: rows = methods, columns = patterns; each cell the 3x3 pruned fraction, with
    the relative weight printed in brackets."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    methods = [m for m in METHOD_ORDER if m in analysis]
    patterns = sorted({p for m in methods for p in analysis[m]}, key=_density, reverse=True)
    figure = Figure(figsize=(max(2.6 * len(patterns), 6.0), 2.6 * len(methods) + 0.6))
    FigureCanvasAgg(figure)
    for i, method in enumerate(methods):
        for j, pattern in enumerate(patterns):
            ax = figure.add_subplot(len(methods), len(patterns), i * len(patterns) + j + 1)
            entry = analysis[method].get(pattern)
            ax.set_xticks([])
            ax.set_yticks([])
            if entry is None:
                ax.axis('off')
                continue
            pruned = np.array(entry['pruned'])
            weight = np.array(entry['relative_weight'])
            target = 1 - _density(pattern)
            ax.imshow(pruned, cmap='RdBu', vmin=target - 0.3, vmax=target + 0.3)
            for (r, c), value in np.ndenumerate(pruned):
                ax.text(c, r, f'{value:.2f}\n({weight[r, c]:.2f})', ha='center', va='center',
                        fontsize=7)
            if i == 0:
                ax.set_title(pattern, fontsize=9)
            if j == 0:
                ax.set_ylabel(method, fontsize=9)
    figure.suptitle('Final deploy 3x3 kernels: pruned fraction per position '
                    '(relative mean |w|)', fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def cost_table(records: Sequence[dict]) -> str:
    """Markdown: per method, median step time (also relative to dense and to SR-STE), peak
    resident memory of its training process, and deploy checks, averaged over seeds."""
    by_method: Dict[str, List[dict]] = {}
    for record in records:
        by_method.setdefault(record['method'], []).append(record)

    def mean(method, key):
        values = [r[key] for r in by_method.get(method, []) if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    dense, srste = mean('dense', 'step_s'), mean('srste', 'step_s')
    lines = ['| method | step (s, median) | step / dense | step / SR-STE | peak RSS (MiB) | '
             'deploy N:M valid | deploy params |', '|---|---|---|---|---|---|---|']
    for method in sorted(by_method, key=lambda m: METHOD_ORDER.index(m)
                         if m in METHOD_ORDER else len(METHOD_ORDER)):
        step, rss = mean(method, 'step_s'), mean(method, 'peak_rss_mb')
        deploy = by_method[method][0].get('deploy') or {}
        lines.append(' | '.join([
            f'| {method}', f'{step:.3f}' if step else '-',
            f'{step / dense:.2f}' if step and dense else '-',
            f'{step / srste:.2f}' if step and srste else '-',
            f'{rss:.0f}' if rss else '-',
            f'{deploy["valid"]}/{deploy["checked"]}' if deploy.get('checked') else
            ('dense' if method == 'dense' else 'no N:M deploy'),
            str(deploy.get('params', '-'))]) + ' |')
    return '\n'.join(lines)


def _in_points(records: Sequence[dict]) -> List[dict]:
    """COCO metrics (0-1, as mmdet logs them) in percentage points, so that the tables' two
    decimals resolve differences of 0.01 mAP points rather than 0.01 mAP."""
    return [dict(r, **{k: v * 100 for k, v in r.items()
                       if k.endswith(('mAP', 'mAP_50')) and isinstance(v, (int, float))})
            for r in records]


def write_report(records: Sequence[dict], out: str, analysis: Optional[dict] = None,
                 structure: Optional[dict] = None) -> str:
    """``summary.md`` (+ plots, ``kernel_positions.json`` from ``analysis`` and
    ``spre_structure.json`` from ``structure``, :func:`spre_structure`) from the cells'
    records."""
    cls = [r for r in records if r['task'] in ('cls', 'natural', 'photo') and not r.get('error')]
    det = [r for r in records if r['task'] in DETECTION_TASKS and not r.get('error')]
    toy = [r for r in records if r['task'] == 'toy' and not r.get('error')]
    failed = [r for r in records if r.get('error')]
    parts = ['# Sweep summary', '']
    if cls:
        parts += ['## Classification: top-1 accuracy (%)', '',
                  tables(cls, 'top1', 'top-1 (%)'), '',
                  f'![accuracy vs sparsity]({osp.basename(plot_metric(cls, "top1", "top-1 (%)", osp.join(out, "accuracy_vs_sparsity.png")))})',  # noqa: E501
                  '']
    if det:
        det = _in_points(det)
        for metric, label in (('bbox_mAP', 'box mAP (%)'), ('segm_mAP', 'mask mAP (%)'),
                              ('cls_top1', 'stage-1 top-1 (%)')):
            parts += [f'## Detection (two-stage pipeline): {label}', '',
                      tables(det, metric, label), '']
        plot_metric(det, 'bbox_mAP', 'box mAP (%)', osp.join(out, 'detection_map.png'))
        parts += ['![detection](detection_map.png)', '']
    if toy:
        toy = _in_points(toy)
        for metric, label in (('bbox_mAP', 'box mAP (%)'), ('segm_mAP', 'mask mAP (%)'),
                              ('bbox_mAP_50', 'box AP50 (%)'), ('segm_mAP_50', 'mask AP50 (%)')):
            parts += [f'## Detection from scratch on the synthetic COCO set: {label}', '',
                      tables(toy, metric, label), '']
        parts += ['## Training cost (each run alone in its process; wall-clock on shared '
                  'cores)', '', cost_table(toy), '']
    if cls:
        parts += ['## Training cost of the classification runs', '', cost_table(cls), '']
    if structure:
        with open(osp.join(out, 'spre_structure.json'), 'w') as f:
            json.dump(structure, f, indent=1)
        parts += ['## SpRe at the end of training: where S lands, and the branch ratio', '',
                  'Share of the 3x3 layers whose S holds a position (centre, mean of the 4 '
                  'cross and of the 4 corner positions), mean [95% interval] over seeds; '
                  'branch ratio = ||K_rep|| / ||K_main||, mean over layers; S flips = entries '
                  'of S changed per layer over the run.', '',
                  spre_structure_table(structure), '']
    if analysis:
        with open(osp.join(out, 'kernel_positions.json'), 'w') as f:
            json.dump(analysis, f, indent=1)
        plot_kernel_positions(analysis, osp.join(out, 'kernel_positions.png'))
        parts += ['## Final deploy kernels per 3x3 position', '',
                  '![kernel positions](kernel_positions.png)', '']
    wall = sum(r.get('wall_s', 0) for r in records)
    parts += [f'{len(records) - len(failed)} cells finished, {len(failed)} failed; '
              f'{wall / 60:.0f} min of training in all (summed over parallel jobs).']
    parts += [f'- FAILED {r["name"]}: {r["error"]}' for r in failed]
    path = osp.join(out, 'summary.md')
    with open(path, 'w') as f:
        f.write('\n'.join(parts) + '\n')
    return path
