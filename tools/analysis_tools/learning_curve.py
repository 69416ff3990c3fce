#!/usr/bin/env python
"""Validation learning curves of mmengine runs: top-1 per epoch, table and plot.

    python tools/analysis_tools/learning_curve.py work_dirs/a work_dirs/b --out curve.png

Reads each work dir's ``vis_data/scalars.json`` (the newest run in it): the validation top-1
logged after each epoch (train with ``train_cfg.val_interval=1``) and the mean training loss
of each epoch. Prints a markdown table (one column per run, their mean, and the mean's gain
over the epoch before: where it stays small the curve has plateaued) and writes the plot. The
budget a method comparison should use is read off this curve (docs/results.md, section 2,
"Natural images").
"""
import argparse
import json
import os
import os.path as osp
from collections import defaultdict
from typing import Dict, List, Tuple

from spre_mmdet.cli import run_tool
from spre_mmdet.errors import SpreMMDetError


def read_curve(work_dir: str, metric: str = 'accuracy/top1'
               ) -> Tuple[Dict[int, float], Dict[int, float]]:
    """``({epoch: metric}, {epoch: mean training loss})`` of the newest run in ``work_dir``."""
    found = []
    for root, _, files in os.walk(work_dir):
        if 'scalars.json' in files and root.endswith('vis_data'):
            found.append(osp.join(root, 'scalars.json'))
    if not found:
        raise SpreMMDetError(f'{work_dir}: no vis_data/scalars.json (not an mmengine run?)')
    val: Dict[int, float] = {}
    losses: Dict[int, List[float]] = defaultdict(list)
    with open(max(found, key=osp.getmtime)) as f:
        for line in f:
            record = json.loads(line)
            if metric in record:
                val[int(record['step'])] = float(record[metric])
            elif 'loss' in record and 'epoch' in record:
                losses[int(record['epoch'])].append(float(record['loss']))
    return val, {e: sum(v) / len(v) for e, v in losses.items()}


def table(curves: Dict[str, Dict[int, float]]) -> str:
    """Markdown: epoch, one column per run, the mean over runs, the mean's gain."""
    epochs = sorted(set().union(*curves.values()))
    lines = ['| epoch | ' + ' | '.join(curves) + ' | mean | gain |',
             '|' + '---|' * (len(curves) + 3)]
    previous = None
    for epoch in epochs:
        values = [curves[label].get(epoch) for label in curves]
        present = [v for v in values if v is not None]
        mean = sum(present) / len(present)
        gain = '-' if previous is None else f'{mean - previous:+.2f}'
        previous = mean
        lines.append(f'| {epoch} | ' + ' | '.join('-' if v is None else f'{v:.2f}'
                                                   for v in values)
                     + f' | {mean:.2f} | {gain} |')
    return '\n'.join(lines)


def plot(curves, losses, path: str, title: str = '') -> str:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(9, 3.4), layout='constrained')
    top, bottom = fig.subplots(1, 2)
    for label, curve in curves.items():
        epochs = sorted(curve)
        top.plot(epochs, [curve[e] for e in epochs], marker='o', markersize=3, label=label)
        loss = losses[label]
        bottom.plot(sorted(loss), [loss[e] for e in sorted(loss)], marker='o', markersize=3,
                    label=label)
    top.set_xlabel('epoch')
    top.set_ylabel('validation top-1 (%)')
    top.grid(linewidth=0.3)
    top.legend(fontsize=8)
    bottom.set_xlabel('epoch')
    bottom.set_ylabel('mean training loss')
    bottom.grid(linewidth=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=80)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('work_dirs', nargs='+')
    p.add_argument('--labels', nargs='+', help='one per work dir (default: folder names)')
    p.add_argument('--out', default='learning_curve.png', help='PNG to write')
    p.add_argument('--title', default='')
    args = p.parse_args(argv)
    labels = args.labels or [osp.basename(osp.normpath(w)) for w in args.work_dirs]
    if len(labels) != len(args.work_dirs):
        p.error('give one label per work dir')
    curves, losses = {}, {}
    for label, work_dir in zip(labels, args.work_dirs):
        curves[label], losses[label] = read_curve(work_dir)
    print(table(curves))
    print(f'wrote {plot(curves, losses, args.out, args.title)}')


if __name__ == '__main__':
    run_tool(main)
