"""What a dataset generator wrote into a folder, and replacing it without touching anything else.

A generator marks its folder with a ``meta.json`` that names it (``generator``) and the
``fingerprint`` of its parameters. From that file each generator lists the files it wrote
(its ``written_files``); the functions here decide, from that list, whether a folder can be
reused as it is, must be regenerated, or must be refused.
"""
import json
import os
import os.path as osp
from typing import List, Optional, Sequence

from ..errors import DatasetError

__all__ = ['generation_meta', 'remove_files', 'prepare_output']


def generation_meta(out: str, generator: str) -> Optional[dict]:
    """The ``meta.json`` of ``out`` if ``generator`` wrote it, else ``None``."""
    try:
        with open(osp.join(out, 'meta.json')) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get('generator') != generator:
        return None
    return meta


def remove_files(out: str, files: Sequence[str]) -> None:
    """Delete ``files``, then the folders below ``out`` that holding them left empty; anything
    else stays."""
    for path in files:
        if osp.isfile(path):
            os.remove(path)
    for folder in sorted({osp.dirname(p) for p in files}, key=len, reverse=True):
        for candidate in (folder, osp.dirname(folder)):
            if candidate != out and osp.isdir(candidate) and not os.listdir(candidate):
                os.rmdir(candidate)


def prepare_output(out: str, generator: str, files: Optional[List[str]], fingerprint: str,
                   force: bool = False) -> bool:
    """Make ``out`` ready for a generation with ``fingerprint``.

    Args:
        out: The output folder.
        generator: The ``generator`` name the generator writes into ``meta.json``.
        files: What an earlier generation wrote into ``out`` (the generator's
            ``written_files(out)``), ``None`` if ``out`` holds no generation of it.
        fingerprint: The fingerprint of the parameters about to be generated.
        force: Regenerate even if ``out`` already holds this generation.

    Returns:
        ``True`` if ``out`` already holds this generation complete (nothing to do); ``False``
        once what an earlier generation wrote is removed (generate now).

    Raises:
        DatasetError: ``out`` is not empty and holds no generation of ``generator``: nothing is
            removed.
    """
    if files is None:
        if osp.isdir(out) and os.listdir(out):
            raise DatasetError(f'{out} is not empty and holds no dataset of this generator '
                               '(no meta.json of it); nothing is overwritten. Choose a new or '
                               'empty --out.')
        return False
    meta = generation_meta(out, generator) or {}
    if not force and meta.get('fingerprint') == fingerprint and all(map(osp.isfile, files)):
        return True
    remove_files(out, files)
    return False
