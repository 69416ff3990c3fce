#!/usr/bin/env python
"""Generate the natural-image classification set from scikit-image's bundled photographs.

    python tools/make_natural_cls.py --out data/natural_cls
    python tools/make_natural_cls.py --out data/natural_cls --num-train 100 --num-val 20 \
        --size 24 --cell 128 --val-size 48 --seed 0 [--force]

Classes are grid regions of the photos; val crops come from a square in the middle of each
region, train crops from the ring around it (disjoint; see docs/natural_cls.md). Needs
scikit-image (`pip install "spre-mmdet[natural]"`);
nothing is downloaded. Idempotent: if --out already holds the set generated with the same
parameters, nothing is done. Regenerating (other parameters, or --force) replaces only the
files an earlier run of this tool wrote there; a folder holding anything else is refused.
"""
import argparse

from spre_mmdet.cli import run_tool
from spre_mmdet.datasets.generated import prepare_output
from spre_mmdet.datasets.natural_cls import (
    fingerprint, generate_natural_classification, previous_generation)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='data/natural_cls', help='output folder')
    p.add_argument('--num-train', type=int, default=100, help='train crops per class')
    p.add_argument('--num-val', type=int, default=20, help='val crops per class')
    p.add_argument('--size', type=int, default=24, help='crop side in pixels')
    p.add_argument('--cell', type=int, default=128, help='side of a class region (pixels)')
    p.add_argument('--val-size', type=int, default=48,
                   help='side of the square in the middle of each region kept for validation')
    p.add_argument('--max-zoom', type=float, default=1.5,
                   help='crop windows of side size..size*max_zoom, resized to size')
    p.add_argument('--min-std', type=float, default=12.0,
                   help='regions flatter than this grey-level std are not classes')
    p.add_argument('--max-side', type=int, default=512, help='photos scaled down to this')
    p.add_argument('--labels', choices=['region', 'photo'], default='region',
                   help='a class per region (default) or per photo')
    p.add_argument('--colour', action='store_true', help='keep the colours (default: grey)')
    p.add_argument('--jitter', type=float, default=1.0,
                   help='scale of the per-crop contrast/brightness change (0: none)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--force', action='store_true', help='regenerate even if present')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    params = dict(num_train=args.num_train, num_val=args.num_val, size=args.size,
                  seed=args.seed, cell=args.cell, val_size=args.val_size,
                  max_zoom=args.max_zoom, min_std=args.min_std, max_side=args.max_side,
                  labels=args.labels, colour=args.colour, jitter=args.jitter)
    fp = fingerprint(**params)
    # refuses a folder holding anything else; removes only what an earlier run of this tool wrote
    if prepare_output(args.out, previous_generation(args.out), fp, args.force):
        print(f'{args.out}: already generated with these parameters, skipping '
              '(use --force to regenerate)')
        return
    from tqdm import tqdm
    with tqdm(desc='natural classification', unit='img') as bar:
        meta = generate_natural_classification(args.out, progress=bar.update, **params)
    print(f'{args.out}: {len(meta["classes"])} classes from {len(meta["photos"])} photos, '
          f'{args.num_train} train / {args.num_val} val crops per class of '
          f'{args.size}x{args.size}, fingerprint {fp}')


if __name__ == '__main__':
    run_tool(main)
