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
    args = parser.parse_args(argv)
    try:
        args.n, args.m = check_nm(args.n, args.m)
    except ValueError as e:
        parser.error(str(e))
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


def main(argv=None) -> int:
    args = parse_args(argv)
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
