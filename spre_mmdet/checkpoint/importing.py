"""Importing a released reference checkpoint file (what ``tools/import_reference.py`` runs):
load it safely, convert it (:mod:`.reference`), and write the result without ever replacing a
file this package did not write."""
import os
import os.path as osp
import tempfile

import torch

from ..errors import CheckpointError
from .reference import FORMATS, ConvertedCheckpoint, convert_reference, usage_snippets
from .safe_load import safe_torch_load


def load_reference(path: str):
    """Load ``path`` weights-only. Both references save only tensors, dicts, lists, numbers and
    strings (SpRe: imagenet.py ``save_checkpoint({'epoch', 'arch', 'state_dict', 'best_acc1',
    ..., 'optimizer'})``, convert.py a bare state dict; NM-sparsity: train_imagenet.py
    ``{'epoch', 'model', 'state_dict', 'best_prec1', 'optimizer'}``), so no global needs to be
    allowed: a file that pickles anything else (code, argparse.Namespace, ...) is refused
    before any of it runs, and a broken file is called corrupt."""
    if not osp.isfile(path):
        raise CheckpointError(f'Checkpoint not found: {path!r}'
                              + (' (a folder: pass the file inside)' if osp.isdir(path) else ''))
    return safe_torch_load(path, map_location='cpu')


def written_by_import(path: str) -> bool:
    """Whether ``path`` is a checkpoint an import wrote (its meta names a reference format)."""
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


def import_reference_file(src: str, out: str, fmt: str = 'auto', n: int = 2, m: int = 4,
                          force: bool = False,
                          allow_repruning: bool = False) -> ConvertedCheckpoint:
    """Convert the reference checkpoint ``src`` and write it to ``out``.

    Raises:
        CheckpointError: ``out`` is a folder, exists (without ``force``), or was not written
            by an import (never replaced); ``src`` is missing, unsafe, corrupt, or of an
            unknown or mismatching layout (:class:`~.reference.ReferenceFormatError`).
    """
    if osp.isdir(out):
        raise CheckpointError(f'--out {out} is a folder; give the file to write, e.g. '
                              f'{osp.join(out, "converted.pth")}.')
    if osp.exists(out):
        if not force:
            raise CheckpointError(f'{out} exists; choose another --out or pass --force to '
                                  'replace it (only a file this tool wrote is replaced).')
        if not written_by_import(out):
            raise CheckpointError(f'{out} exists and was not written by this tool, so it is not '
                                  'replaced, even with --force; choose another --out.')
    converted = convert_reference(load_reference(src), fmt, n, m,
                                  allow_repruning=allow_repruning)
    converted.meta['source_file'] = osp.basename(src)
    write_atomically(converted.checkpoint(), out)
    return converted


def describe(converted: ConvertedCheckpoint, src: str, out: str) -> str:
    """What the import found and wrote, and the configs that load the result."""
    snippets = usage_snippets(converted.meta, out)
    return '\n'.join([f'{src}:', *(f'  {line}' for line in converted.summary),
                      f'Wrote {out} ({len(converted.state_dict)} tensors: backbone.* and '
                      'head.fc.*)', '', 'ImageNet evaluation with mmpretrain (a config file):',
                      '', snippets['mmpretrain'],
                      'Detection backbone (in a detection config of this package):', '',
                      snippets['detection']])
