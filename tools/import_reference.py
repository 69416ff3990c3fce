"""Convert a released SpRe or SR-STE ImageNet ResNet checkpoint into this package's format.

    python tools/import_reference.py SRC --out DST [--format auto|spre|spre-deploy|srste]
        [--n 2 --m 4] [--force] [--allow-repruning]

Formats (see docs/reference_checkpoints.md):

* ``spre``: SpRe's training-time checkpoint (github.com/zyxxmu/SpRE) -> SparseResNet with
  SR-STE masks and SpRe branches (method ``srste+spre``);
* ``spre-deploy``: SpRe's re-parameterized checkpoint (its ``convert.py``) -> a stock ResNet
  whose folded convs are exactly N:M (method ``deploy``);
* ``srste``: an NM-sparsity checkpoint (github.com/aojunzz/NM-sparsity) -> SparseResNet with
  SR-STE masks derived from the weights (method ``srste``).

DST holds ``{'state_dict': {'backbone.*', 'head.fc.*'}, 'meta': {...}}``: an mmpretrain
ImageClassifier checkpoint, and a detection backbone checkpoint (``prefix='backbone.'``). The
tool prints what it found and the config that loads DST. Neither reference records N:M in its
files: pass the one the model was trained with (--n/--m, default 2:4).

Errors (unknown layout, a dense checkpoint given as SpRe, weights that are not the requested
N:M, an unsupported depth, a file with pickled code, an existing DST) print ``ERROR: ...``
and exit with status 1; nothing is written then.
"""
import argparse

import spre_mmdet  # noqa: F401  (must come first: safe weights-only checkpoint loading)
from spre_mmdet.checkpoint import FORMATS
from spre_mmdet.checkpoint.importing import describe, import_reference_file
from spre_mmdet.cli import run_tool


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a SpRe / SR-STE reference ImageNet ResNet checkpoint into an '
        'mmpretrain + spre_mmdet checkpoint (backbone.* / head.fc.* keys, meta).')
    parser.add_argument('src', help='the reference checkpoint (.pth / .pth.tar)')
    parser.add_argument('--out', required=True, help='the converted checkpoint to write')
    parser.add_argument('--format', default='auto', choices=['auto', *FORMATS],
                        help='the reference format (default: detected from the keys)')
    parser.add_argument('--n', type=int, default=2, help='N of N:M (default: 2)')
    parser.add_argument('--m', type=int, default=4, help='M of N:M (default: 4)')
    parser.add_argument('--force', action='store_true',
                        help='replace an --out that this tool wrote before (never another file)')
    parser.add_argument('--allow-repruning', action='store_true',
                        help='convert an SR-STE file whose weights look trained with '
                        'NM-sparsity\'s older kernel-dimension groups (masks re-derived in the '
                        'hardware layout: fine-tune afterwards)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    converted = import_reference_file(args.src, args.out, args.format, args.n, args.m,
                                      args.force, args.allow_repruning)
    print(describe(converted, args.src, args.out))
    return 0


if __name__ == '__main__':
    run_tool(main)
