#!/usr/bin/env python
"""Generate the synthetic "toy COCO" instance-segmentation dataset.

    python tools/make_toy_coco.py --out data/toy_coco
    python tools/make_toy_coco.py --out data/toy_coco --num-train 400 --num-val 80 \
        --size 128 --seed 0 [--force]
    python tools/make_toy_coco.py --out data/toy_coco_photos --backgrounds photos  # needs [natural]

Idempotent: if ``--out`` already holds the set generated with the same parameters (the
fingerprint stored in its annotation files, and every image they list), nothing is done.
Regenerating (other parameters, or --force) replaces only the files an earlier run of this tool
wrote there; a folder holding anything else is refused.
"""
import argparse

from spre_mmdet.cli import run_tool
from spre_mmdet.datasets.generated import prepare_output
from spre_mmdet.datasets.synthetic_coco import (
    BACKGROUNDS, dataset_fingerprint, generate_synthetic_coco, previous_generation)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='data/toy_coco', help='output directory')
    p.add_argument('--num-train', type=int, default=400)
    p.add_argument('--num-val', type=int, default=80)
    p.add_argument('--size', type=int, nargs='+', default=[128],
                   help='image size: S (square) or H W')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--min-objects', type=int, default=2)
    p.add_argument('--max-objects', type=int, default=5)
    p.add_argument('--backgrounds', choices=BACKGROUNDS, default='synthetic',
                   help='synthetic backgrounds, or crops of the photographs scikit-image ships '
                        '(train and val from disjoint parts of each; pip install '
                        '"spre-mmdet[natural]")')
    p.add_argument('--force', action='store_true', help='regenerate even if present')
    return p.parse_args(argv)


def _progress_bar(total):
    try:
        from tqdm import tqdm
        bar = tqdm(total=total, desc='toy coco', unit='img')
        return bar.update, bar.close
    except ImportError:  # pragma: no cover
        from mmengine.utils import ProgressBar
        bar = ProgressBar(total)
        return bar.update, lambda: None


def main(argv=None):
    args = parse_args(argv)
    if len(args.size) == 1:
        size = (args.size[0], args.size[0])
    elif len(args.size) == 2:
        size = tuple(args.size)
    else:
        raise SystemExit('--size takes one or two integers')
    num_objects = (args.min_objects, args.max_objects)
    size_range = (0.12, 0.42)
    fp = dataset_fingerprint(args.num_train, args.num_val, size, args.seed, num_objects,
                             size_range, args.backgrounds)
    # refuses a folder holding anything else; removes only what an earlier run of this tool wrote
    if prepare_output(args.out, previous_generation(args.out), fp, args.force):
        print(f'{args.out}: already generated with these parameters, skipping '
              '(use --force to regenerate)')
        return 0
    update, close = _progress_bar(args.num_train + args.num_val)
    try:
        paths = generate_synthetic_coco(
            args.out, num_train=args.num_train, num_val=args.num_val, image_size=size,
            seed=args.seed, num_objects=num_objects, size_range=size_range,
            progress=update, backgrounds=args.backgrounds)
    finally:
        close()
    for k, v in paths.items():
        print(f'{k}: {v}')
    return 0


if __name__ == '__main__':
    run_tool(main)
