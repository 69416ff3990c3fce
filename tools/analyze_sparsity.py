"""Per-kernel-position sparsity of a checkpoint's k x k convs: unstructured vs N:M vs SpRe.

For every k x k conv (k > 1) under ``--prefix`` it computes, at each kernel position (i, j):

(a) the sparsity of unstructured magnitude pruning at rate 1 - N/M over the layer;
(b) the sparsity of N:M (the checkpoint's ``sparsity.mask`` if present, else ``nm_mask`` of the
    weight): exactly 1 - N/M everywhere;
(c) SpRe's spatial mask S (the checkpoint's ``spatial`` buffer if present, else
    ``spatial_mask``) and the training-time density of the SpRe block (main + extra branch).

Writes to ``--out-dir``: ``overview.png`` (averages over layers), ``layers.png`` (one heatmap per
layer, S outlined), ``spatial_masks.json`` (layer -> S) and ``position_sparsity.csv``.

Examples::

    python tools/analyze_sparsity.py work_dirs/spre_r50/epoch_12.pth --out-dir spre_analysis
    python tools/analyze_sparsity.py ckpt.pth --n 1 --m 4 --prefix backbone.layer3.
    python tools/analyze_sparsity.py --demo          # synthetic weights, no checkpoint needed

SpRe's premise over seeds (``--premise``, repeatable, one per data set; trained *dense*
checkpoints): per layer and kernel position, the mean |w| relative to the layer's mean and the
fraction that unstructured magnitude pruning at each ``--densities`` keeps, mean and 95%
interval over the checkpoints (seeds); writes ``premise.md`` (table), ``premise.csv`` and
``premise.png`` to ``--out-dir``::

    python tools/analyze_sparsity.py --out-dir premise \
        --premise natural=s0/epoch_8.pth,s1/epoch_8.pth,s2/epoch_8.pth \
        --premise shapes=a/epoch_3.pth,b/epoch_3.pth,c/epoch_3.pth
"""
import argparse
import os
import os.path as osp

import spre_mmdet  # noqa: F401  (must come first: safe weights-only checkpoint loading)
from spre_mmdet import analysis
from spre_mmdet.checkpoint import state_dict_of
from spre_mmdet.cli import run_tool
from spre_mmdet.errors import CheckpointError
from spre_mmdet.sparsity import check_nm


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Per-kernel-position sparsity of k x k convs: unstructured magnitude '
        'pruning vs N:M vs SpRe\'s spatial mask S. Writes PNG plots, S as JSON and a CSV.')
    parser.add_argument('checkpoint', nargs='?',
                        help='mmengine checkpoint (.pth) or a plain state dict saved by torch.save')
    parser.add_argument('--n', type=int, default=2, help='N of N:M (default: 2)')
    parser.add_argument('--m', type=int, default=4, help='M of N:M (default: 4)')
    parser.add_argument('--prefix', default='backbone.',
                        help='analyse conv weights whose key starts with this (default: '
                        '"backbone."; "" for the whole model)')
    parser.add_argument('--out-dir', default='sparsity_analysis',
                        help='output folder (default: ./sparsity_analysis)')
    parser.add_argument('--no-plots', action='store_true', help='write only JSON and CSV')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--demo', action='store_true',
                        help='analyse a synthetic SpRe-like backbone (centre/cross-heavy 3x3 '
                        'weights) instead of a checkpoint')
    parser.add_argument('--premise', action='append', metavar='LABEL=CKPT[,CKPT...]',
                        help='SpRe\'s premise over seeds of a dense network: per-position '
                        'relative |w| and kept fraction of unstructured pruning (repeat per '
                        'data set); writes premise.md, premise.csv, premise.png')
    parser.add_argument('--densities', default='1/2,1/8,1/16',
                        help='densities of --premise (default: 1/2,1/8,1/16)')
    args = parser.parse_args(argv)
    try:
        args.n, args.m = check_nm(args.n, args.m)
        args.densities = tuple(analysis.parse_density(d) for d in args.densities.split(','))
    except ValueError as e:
        parser.error(str(e))
    if args.premise:
        if args.checkpoint or args.demo:
            parser.error('--premise takes its checkpoints itself (no CHECKPOINT, no --demo)')
        groups = []
        for item in args.premise:
            label, _, paths = item.partition('=')
            paths = [p for p in paths.split(',') if p]
            if not label or not paths:
                parser.error(f'--premise wants LABEL=CKPT[,CKPT...], got {item!r}')
            groups.append((label, paths))
        args.premise = groups
        return args
    if args.demo == bool(args.checkpoint):
        parser.error('give a CHECKPOINT, or --demo for synthetic weights (not both)')
    return args


def load_state_dict(path: str):
    """The model state dict of ``path`` (mmengine checkpoint or plain state dict)."""
    if not osp.isfile(path):
        raise CheckpointError(
            f'Checkpoint not found: {path!r}' + (' (it is a folder; pass the .pth file inside)'
                                                 if osp.isdir(path) else ''))
    from mmengine.runner import CheckpointLoader
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    return state_dict_of(checkpoint, f'Checkpoint {path}')


def premise(args) -> int:
    """The ``--premise`` mode: one aggregate per data set, then the table, CSV and plot."""
    all_stats = []
    for label, paths in args.premise:
        runs = []
        for path in paths:
            layers, skipped = analysis.premise_of_state_dict(
                load_state_dict(path), args.prefix, args.densities, m=16)
            runs.append(layers)
        all_stats.append(analysis.aggregate(label, runs))
        print(analysis.premise_table(all_stats[-1], prefix=args.prefix))
        for skip in skipped:
            print(f'skipped: {skip}')
        print()
    out = args.out_dir
    os.makedirs(out, exist_ok=True)
    table = osp.join(out, 'premise.md')
    with open(table, 'w') as f:
        f.write('\n\n'.join(analysis.premise_table(s, prefix=args.prefix) for s in all_stats)
                + '\n')
    written = [table, analysis.write_premise_csv(all_stats, osp.join(out, 'premise.csv'))]
    if not args.no_plots:
        written.append(analysis.plot_premise(all_stats, osp.join(out, 'premise.png'),
                                             prefix=args.prefix))
    print('Wrote:')
    for path in written:
        print(f'  {path}')
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.premise:
        return premise(args)
    if args.demo:
        state_dict = analysis.synthetic_state_dict(n=args.n, m=args.m, prefix=args.prefix)
        source = f'synthetic demo weights ({args.n}:{args.m})'
    else:
        state_dict = load_state_dict(args.checkpoint)
        source = args.checkpoint
    layers, skipped = analysis.analyze_state_dict(state_dict, args.n, args.m, args.prefix,
                                                  progress=not args.no_progress)
    if not layers:
        raise analysis.AnalysisError(
            f'None of the k x k convs under {args.prefix!r} can be {args.n}:{args.m}: '
            + '; '.join(f'{s.name}: {s.reason}' for s in skipped))

    print(f'{source}: {len(layers)} k x k conv(s) under {args.prefix!r}'
          + (f', {len(skipped)} skipped' if skipped else ''))
    print(analysis.format_table(layers, skipped, prefix=args.prefix))

    out = args.out_dir
    os.makedirs(out, exist_ok=True)
    written = [
        analysis.write_spatial_json(layers, osp.join(out, 'spatial_masks.json')),
        analysis.write_csv(layers, osp.join(out, 'position_sparsity.csv')),
    ]
    if not args.no_plots:
        written.append(analysis.plot_overview(
            layers, osp.join(out, 'overview.png'),
            title=f'{osp.basename(source) if not args.demo else source}: per-position sparsity '
            f'of {len(layers)} k x k convs under {args.prefix!r}'))
        written += analysis.plot_layers(layers, osp.join(out, 'layers.png'), prefix=args.prefix)
    print('\nWrote:')
    for path in written:
        print(f'  {path}')
    return 0


if __name__ == '__main__':
    run_tool(main)
