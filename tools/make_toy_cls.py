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

from spre_mmdet.cli import run_tool
from spre_mmdet.datasets.generated import prepare_output
from spre_mmdet.datasets.synthetic_cls import (
    fingerprint, generate_synthetic_classification, previous_generation)


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
    fp = fingerprint(args.num_train, args.num_val, args.size, args.seed)
    # refuses a folder holding anything else; removes only what an earlier run of this tool wrote
    if prepare_output(args.out, previous_generation(args.out), fp, args.force):
        print(f'{args.out}: already generated with these parameters, skipping '
              '(use --force to regenerate)')
        return
    from tqdm import tqdm
    with tqdm(total=args.num_train + args.num_val, desc='toy classification',
              unit='img') as bar:
        generate_synthetic_classification(args.out, args.num_train, args.num_val, args.size,
                                          args.seed, progress=bar.update)
    print(f'{args.out}: {args.num_train} train / {args.num_val} val images of '
          f'{args.size}x{args.size}, fingerprint {fp}')


if __name__ == '__main__':
    run_tool(main)
