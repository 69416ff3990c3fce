#!/usr/bin/env python
"""Generate the synthetic "toy classification" set (mmpretrain folder layout).

    python tools/make_toy_cls.py --out data/toy_cls
    python tools/make_toy_cls.py --out data/toy_cls --num-train 8000 --num-val 2000 --size 24 \
        --seed 0 [--force]

Idempotent: if --out already holds the set generated with the same parameters (its meta.json
fingerprint and every image), nothing is done. Regenerating (other parameters, or --force)
replaces only the files an earlier run of this tool wrote there; a folder holding anything else
is refused. See docs/synthetic_cls.md.
"""
import argparse
import os
import os.path as osp

from spre_mmdet.cli import run_tool
from spre_mmdet.datasets.synthetic_cls import (
    fingerprint, generate_synthetic_classification, remove_generated, written_files)
from spre_mmdet.errors import DatasetError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='data/toy_cls', help='output folder')
    p.add_argument('--num-train', type=int, default=8000)
    p.add_argument('--num-val', type=int, default=2000)
    p.add_argument('--size', type=int, default=24, help='image side in pixels')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--force', action='store_true', help='regenerate even if present')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    previous = written_files(args.out)
    if previous is None and osp.isdir(args.out) and os.listdir(args.out):
        raise DatasetError(f'{args.out} is not empty and holds no dataset of this generator '
                           '(no meta.json of it); nothing is overwritten. Choose a new or empty '
                           '--out.')
    fp = fingerprint(args.num_train, args.num_val, args.size, args.seed)
    if previous is not None and not args.force and all(map(osp.isfile, previous)):
        meta_fp = osp.join(args.out, 'meta.json')
        with open(meta_fp) as f:
            if f'"{fp}"' in f.read():
                print(f'{args.out}: already generated with these parameters, skipping '
                      '(use --force to regenerate)')
                return
    remove_generated(args.out)  # only what an earlier run of this tool wrote
    from tqdm import tqdm
    with tqdm(total=args.num_train + args.num_val, desc='toy classification',
              unit='img') as bar:
        generate_synthetic_classification(args.out, args.num_train, args.num_val, args.size,
                                          args.seed, progress=bar.update)
    print(f'{args.out}: {args.num_train} train / {args.num_val} val images of '
          f'{args.size}x{args.size}, fingerprint {fp}')


if __name__ == '__main__':
    run_tool(main)
