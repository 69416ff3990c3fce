#!/usr/bin/env python
"""Generate the synthetic "toy COCO" instance-segmentation dataset.

    python tools/make_toy_coco.py --out data/toy_coco
    python tools/make_toy_coco.py --out data/toy_coco --num-train 400 --num-val 80 \
        --size 128 --seed 0 [--force]

Idempotent: if ``--out`` already holds a dataset generated with the same parameters (checked
through the fingerprint stored in the annotation files and the image counts), nothing is done.
Use ``--force`` to regenerate anyway.
"""
import argparse
import json
import os.path as osp
import shutil
import sys

from spre_mmdet.datasets.synthetic_coco import (
    dataset_fingerprint, generate_synthetic_coco)


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
    p.add_argument('--force', action='store_true', help='regenerate even if present')
    return p.parse_args(argv)


def _existing_matches(out, fp, num_train, num_val):
    try:
        for split, n in (('train', num_train), ('val', num_val)):
            with open(osp.join(out, 'annotations', f'instances_{split}.json')) as f:
                d = json.load(f)
            if d.get('info', {}).get('fingerprint') != fp or len(d['images']) != n:
                return False
            for img in d['images']:
                if not osp.isfile(osp.join(out, split, img['file_name'])):
                    return False
    except (OSError, ValueError, KeyError):
        return False
    return True


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
                             size_range)
    if not args.force and _existing_matches(args.out, fp, args.num_train, args.num_val):
        print(f'{args.out}: already generated with these parameters, skipping '
              '(use --force to regenerate)')
        return 0
    for sub in ('train', 'val', 'annotations'):
        if osp.isdir(osp.join(args.out, sub)):
            shutil.rmtree(osp.join(args.out, sub))
    update, close = _progress_bar(args.num_train + args.num_val)
    try:
        paths = generate_synthetic_coco(
            args.out, num_train=args.num_train, num_val=args.num_val, image_size=size,
            seed=args.seed, num_objects=num_objects, size_range=size_range,
            progress=update)
    finally:
        close()
    for k, v in paths.items():
        print(f'{k}: {v}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
