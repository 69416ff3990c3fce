"""Evaluate a deploy checkpoint with stock mmdet only: any import of spre_mmdet fails here.

    python tools/test_stock_mmdet.py DEPLOY_CONFIG DEPLOY_CHECKPOINT [--work-dir DIR]

Proves that the re-parameterized detector needs nothing from this package. Prints the COCO
metrics, and a last line ``STOCK_MMDET_METRICS {...}`` for scripts.
"""
import argparse
import sys


class _NoSpreMmdet:
    """Import hook that refuses spre_mmdet (installed or on the path)."""

    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'spre_mmdet':
            raise ImportError(f'{name}: this evaluation uses stock mmdet only')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir', default='work_dirs/stock_mmdet_test')
    args = parser.parse_args()
    loaded = sorted(name for name in sys.modules if name.split('.')[0] == 'spre_mmdet')
    if loaded:  # already imported: the hook below could not keep it out
        sys.exit(f'ERROR: spre_mmdet is already imported in this process ({loaded[0]}), so the '
                 'evaluation would not be stock mmdet; run this tool in a fresh interpreter.')
    sys.meta_path.insert(0, _NoSpreMmdet())
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(args.config)
    cfg.load_from, cfg.work_dir = args.checkpoint, args.work_dir
    metrics = Runner.from_cfg(cfg).test()
    print('STOCK_MMDET_METRICS', {key: float(value) for key, value in metrics.items()})


if __name__ == '__main__':
    main()
