"""Re-parameterize a sparse training checkpoint into a plain N:M mmdet detector (or, from an
mmpretrain config, a plain N:M ResNet classifier).

    python tools/reparameterize.py CONFIG CHECKPOINT --out DIR [--force] [--finish-by-magnitude]
        [--interspace-form {basis,merged}]

Writes DIR/deploy.pth (weights exactly N:M, SpRe branches folded), DIR/deploy_config.py (stock
mmdet ResNet; does not import spre_mmdet) and DIR/sparsity_report.txt. Then evaluate it with
stock mmdet: python tools/test.py DIR/deploy_config.py DIR/deploy.pth

Interspace convs are written in basis form by default (basis conv + N:M 1x1 conv; the config
then keeps SparseResNet(sparsity.deploy=True) and imports spre_mmdet); --interspace-form merged
writes them as dense k x k convs of a stock ResNet instead. The report says which was used.

The checkpoint must fit the config exactly (a mismatch names the keys and the likely cause), and
--out must be a new or empty folder, or an earlier export (replaced with --force): the tool never
deletes files it did not write, and refuses a folder holding its input or the current folder.
"""
import argparse
import os.path as osp

import spre_mmdet  # noqa: F401  (must come first: safe checkpoint loading)
from spre_mmdet.checkpoint import load_checkpoint_checked
from spre_mmdet.cli import run_tool
from spre_mmdet.deploy import INTERSPACE_FORMS, build_model, export_deploy
from spre_mmdet.errors import CheckpointError
from spre_mmdet.sparsity import sparse_layers

from mmengine.config import Config, DictAction


def parse_args():
    parser = argparse.ArgumentParser(description='Re-parameterize a sparse detector to deploy')
    parser.add_argument('config', help='the training config of the sparse run')
    parser.add_argument('checkpoint', help='a checkpoint written by that run')
    parser.add_argument('--out', required=True,
                        help='output folder: new or empty (or an earlier export, with --force)')
    parser.add_argument('--force', action='store_true',
                        help='replace the files of an earlier export in --out (never other '
                        'files)')
    parser.add_argument('--finish-by-magnitude', action='store_true',
                        help='end unfinished mask schedules (LBC before t_f) now, keeping the '
                        'best subset of each group, instead of refusing to export')
    parser.add_argument('--interspace-form', choices=INTERSPACE_FORMS, default='basis',
                        help='interspace convs as basis conv + N:M 1x1 (basis, default) or as '
                        'merged dense k x k convs of a stock ResNet (merged)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, as in tools/train.py')
    return parser.parse_args()


def main():
    args = parse_args()
    if not osp.isfile(args.checkpoint):
        raise CheckpointError(f'Checkpoint {args.checkpoint} does not exist.')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.model.backbone.get('init_cfg'):
        cfg.model.backbone.init_cfg = None  # the checkpoint provides all weights
    model = build_model(cfg)  # a detector (mmdet) or a classifier (mmpretrain)
    checkpoint = load_checkpoint_checked(model, args.checkpoint)
    if args.finish_by_magnitude:
        for name, layer in sparse_layers(model):
            if not layer.sparsity.is_final:
                layer.sparsity.finish_by_magnitude(layer.weight)
                print(f'{name}: schedule ended early, mask finished by magnitude')
    meta = dict(source_checkpoint=osp.basename(args.checkpoint),
                iter=checkpoint.get('meta', {}).get('iter'))
    paths = export_deploy(model, cfg, args.out, force=args.force, meta=meta,
                          interspace_form=args.interspace_form, protected=[args.checkpoint])
    with open(paths['sparsity_report.txt']) as f:
        print(f.read())
    print('Deploy model written:')
    for path in paths.values():
        print(f'  {path}')
    print(f'Evaluate it: python tools/test.py {paths["deploy_config.py"]} '
          f'{paths["deploy.pth"]}')


if __name__ == '__main__':
    run_tool(main)
