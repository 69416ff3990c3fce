"""What a dataset generator wrote into a folder, and replacing it without touching anything else.

Each generator reads back what an earlier run of it wrote into a folder (its
``previous_generation``: the fingerprint of that run's parameters and the files it wrote, from
a file it marks as its own: the classification sets' ``meta.json``, the toy COCO set's
annotation files). :func:`prepare_output` decides from that whether the folder is reused as
it is, regenerated (removing only those files) or refused.
"""
import json
import os
import os.path as osp
from typing import List, NamedTuple, Optional, Sequence

from ..errors import DatasetError

__all__ = ['Generation', 'generation_meta', 'remove_files', 'prepare_output']


class Generation(NamedTuple):
    """What an earlier generation left in a folder."""

    fingerprint: Optional[str]  #: its parameters' fingerprint (``None``: unknown / mixed)
    files: List[str]  #: every file it wrote


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
    out = osp.normpath(out)
    for folder in sorted({osp.normpath(osp.dirname(p)) for p in files}, key=len, reverse=True):
        for candidate in (folder, osp.dirname(folder)):
            if candidate.startswith(out + os.sep) and osp.isdir(candidate) and \
                    not os.listdir(candidate):
                os.rmdir(candidate)


def prepare_output(out: str, previous: Optional[Generation], fingerprint: str,
                   force: bool = False) -> bool:
    """Make ``out`` ready for a generation with ``fingerprint``.

    Args:
        out: The output folder.
        previous: What an earlier generation of the same generator left in ``out`` (its
            ``previous_generation(out)``), ``None`` if it holds none.
        fingerprint: The fingerprint of the parameters about to be generated.
        force: Regenerate even if ``out`` already holds this generation.

    Returns:
        ``True`` if ``out`` already holds this generation complete (nothing to do); ``False``
        once what an earlier generation wrote is removed (generate now).

    Raises:
        DatasetError: ``out`` is not empty and holds no generation of this generator: nothing
            is removed.
    """
    if previous is None:
        if osp.isdir(out) and os.listdir(out):
            raise DatasetError(f'{out} is not empty and holds no dataset of this generator; '
                               'nothing is overwritten. Choose a new or empty --out.')
        return False
    if not force and previous.fingerprint == fingerprint and all(map(osp.isfile,
                                                                      previous.files)):
        return True
    remove_files(out, previous.files)
    return False
