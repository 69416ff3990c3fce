"""prepare_output: reuse a complete generation, replace only what a generator wrote, refuse
anything else (with the synthetic classification generator, and through make_toy_coco)."""
import os

import pytest

from spre_mmdet.datasets import synthetic_cls
from spre_mmdet.datasets.generated import prepare_output
from spre_mmdet.errors import DatasetError


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names)


def _prepare(out, fp, force=False):
    return prepare_output(str(out), synthetic_cls.previous_generation(str(out)), fp, force)


def test_empty_or_missing_folder_is_generated(tmp_path):
    assert _prepare(tmp_path / 'new', 'abc') is False
    (tmp_path / 'empty').mkdir()
    assert _prepare(tmp_path / 'empty', 'abc') is False


def test_reuse_regenerate_and_keep_foreign_files(tmp_path):
    out = tmp_path / 'set'
    fp = synthetic_cls.generate_synthetic_classification(str(out), 4, 2, 16, seed=0)
    (out / 'notes.txt').write_text('mine')
    (out / 'train' / 'circle' / 'mine.png').write_bytes(b'x')
    written = synthetic_cls.previous_generation(str(out)).files
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


def test_toy_coco_tool_replaces_only_its_files(tmp_path, repo_root, capsys):
    """make_toy_coco: a second run with the same parameters is skipped; other parameters replace
    only its own images and annotation files; a COCO-like folder of someone else (an
    ``annotations/`` folder with other files) is refused untouched."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('make_toy_coco',
                                                  repo_root / 'tools' / 'make_toy_coco.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / 'toy'
    args = ['--out', str(out), '--num-train', '3', '--num-val', '2', '--size', '48']
    tool.main(args)
    first = _files(out)
    assert len(first) == 2 + 3 + 2
    (out / 'annotations' / 'mine.json').write_text('{}')
    tool.main(args)
    assert 'already generated' in capsys.readouterr().out
    tool.main(['--out', str(out), '--num-train', '2', '--num-val', '1', '--size', '48'])
    assert len(_files(out)) == 2 + 2 + 1 + 1
    assert (out / 'annotations' / 'mine.json').read_text() == '{}'

    coco = tmp_path / 'coco'
    (coco / 'annotations').mkdir(parents=True)
    (coco / 'annotations' / 'instances_train.json').write_text('{"info": {}, "images": []}')
    with pytest.raises(DatasetError, match='new or empty --out'):
        tool.main(['--out', str(coco), '--num-train', '1', '--num-val', '1', '--size', '48'])
    assert _files(coco) == [os.path.join('annotations', 'instances_train.json')]
