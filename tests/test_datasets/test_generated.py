"""prepare_output: reuse a complete generation, replace only what a generator wrote, refuse
anything else (shown with the synthetic classification generator)."""
import os

import pytest

from spre_mmdet.datasets import synthetic_cls
from spre_mmdet.datasets.generated import prepare_output
from spre_mmdet.errors import DatasetError


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names)


def _prepare(out, fp, force=False):
    return prepare_output(str(out), synthetic_cls.GENERATOR, synthetic_cls.written_files(str(out)),
                          fp, force)


def test_empty_or_missing_folder_is_generated(tmp_path):
    assert _prepare(tmp_path / 'new', 'abc') is False
    (tmp_path / 'empty').mkdir()
    assert _prepare(tmp_path / 'empty', 'abc') is False


def test_reuse_regenerate_and_keep_foreign_files(tmp_path):
    out = tmp_path / 'set'
    fp = synthetic_cls.generate_synthetic_classification(str(out), 4, 2, 16, seed=0)
    (out / 'notes.txt').write_text('mine')
    (out / 'train' / 'circle' / 'mine.png').write_bytes(b'x')
    written = synthetic_cls.written_files(str(out))
    assert len(written) == 1 + 4 + 2 and all(map(os.path.isfile, written))

    assert _prepare(out, fp) is True  # complete, same parameters: nothing to do
    assert all(map(os.path.isfile, written))

    os.remove(written[-1])  # incomplete: regenerate
    assert _prepare(out, fp) is False
    assert not any(map(os.path.exists, written))
    assert _files(out) == ['notes.txt', os.path.join('train', 'circle', 'mine.png')]

    synthetic_cls.generate_synthetic_classification(str(out), 4, 2, 16, seed=0)
    assert _prepare(out, fp, force=True) is False  # --force regenerates
    synthetic_cls.generate_synthetic_classification(str(out), 4, 2, 16, seed=0)
    assert _prepare(out, 'other parameters') is False
    assert not any(map(os.path.exists, written))
    assert (out / 'notes.txt').read_text() == 'mine'
    assert (out / 'train' / 'circle' / 'mine.png').read_bytes() == b'x'


def test_foreign_folder_is_refused_untouched(tmp_path):
    (tmp_path / 'keep.txt').write_text('x')
    with pytest.raises(DatasetError, match='new or empty --out'):
        _prepare(tmp_path, 'abc')
    assert _files(tmp_path) == ['keep.txt']
