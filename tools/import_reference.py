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
import os
import os.path as osp
import sys
import tempfile

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

import spre_mmdet  # noqa: E402,F401  (must come first: safe weights-only checkpoint loading)
from spre_mmdet.checkpoint import FORMATS, convert_reference, safe_torch_load  # noqa: E402
from spre_mmdet.checkpoint.reference import usage_snippets  # noqa: E402
from spre_mmdet.cli import run_tool  # noqa: E402
from spre_mmdet.errors import CheckpointError  # noqa: E402

import torch  # noqa: E402


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


def load_reference(path: str):
    """Load ``path`` weights-only. Both references save only tensors, dicts, lists, numbers and
    strings (SpRe: imagenet.py ``save_checkpoint({'epoch', 'arch', 'state_dict', 'best_acc1',
    ..., 'optimizer'})``, convert.py a bare state dict; NM-sparsity: train_imagenet.py
    ``{'epoch', 'model', 'state_dict', 'best_prec1', 'optimizer'}``), so no global needs to be
    allowed: a file that pickles anything else (code, argparse.Namespace, ...) is refused by
    :func:`safe_torch_load` before any of it runs, and a broken file is called corrupt."""
    if not osp.isfile(path):
        raise CheckpointError(f'Checkpoint not found: {path!r}'
                              + (' (a folder: pass the file inside)' if osp.isdir(path) else ''))
    return safe_torch_load(path, map_location='cpu')


def written_by_this_tool(path: str) -> bool:
    """Whether ``path`` is a checkpoint this tool wrote (its meta names a reference format)."""
    try:
        meta = safe_torch_load(path, map_location='cpu').get('meta', {})
    except Exception:  # noqa: BLE001  (unreadable: certainly not ours to replace)
        return False
    return isinstance(meta, dict) and meta.get('source_format') in FORMATS


def write_atomically(checkpoint: dict, out: str) -> None:
    """``torch.save`` to a temporary file next to ``out``, then rename: a crash or an error
    never leaves a partial ``out``."""
    parent = osp.dirname(osp.abspath(out))
    os.makedirs(parent, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix='.import-', suffix='.pth', dir=parent)
    os.close(handle)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, out)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def main(argv=None) -> int:
    args = parse_args(argv)
    if osp.isdir(args.out):
        raise CheckpointError(f'--out {args.out} is a folder; give the file to write, e.g. '
                              f'{osp.join(args.out, "converted.pth")}.')
    if osp.exists(args.out):
        if not args.force:
            raise CheckpointError(f'{args.out} exists; choose another --out or pass --force to '
                                  'replace it (only a file this tool wrote is replaced).')
        if not written_by_this_tool(args.out):
            raise CheckpointError(f'{args.out} exists and was not written by this tool, so it '
                                  'is not replaced, even with --force; choose another --out.')
    converted = convert_reference(load_reference(args.src), args.format, args.n, args.m,
                                  allow_repruning=args.allow_repruning)
    converted.meta['source_file'] = osp.basename(args.src)
    write_atomically(converted.checkpoint(), args.out)

    print(f'{args.src}:')
    for line in converted.summary:
        print(f'  {line}')
    print(f'Wrote {args.out} ({len(converted.state_dict)} tensors: backbone.* and head.fc.*)')
    snippets = usage_snippets(converted.meta, args.out)
    print('\nImageNet evaluation with mmpretrain (a config file):\n')
    print(snippets['mmpretrain'])
    print('Detection backbone (in a detection config of this package):\n')
    print(snippets['detection'])
    return 0


if __name__ == '__main__':
    run_tool(main)
