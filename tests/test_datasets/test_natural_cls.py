"""The natural-image classification generator (spre_mmdet.datasets.natural_cls) and its tool."""
import csv
import hashlib
import json
import os
import os.path as osp

import numpy as np
import pytest

pytest.importorskip('skimage')

from spre_mmdet.datasets import natural_cls  # noqa: E402
from spre_mmdet.errors import DatasetError  # noqa: E402

SMALL = dict(num_train=3, num_val=2, size=16, seed=0, cell=80, val_size=24, max_zoom=1.5,
             min_std=12.0, max_side=256, photos=('brick', 'coins'))


def _digest(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = osp.join(root, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('natural'))
    meta = natural_cls.generate_natural_classification(out, **SMALL)
    return out, meta


def test_layout_and_meta(small):
    """mmpretrain's layout (split/class/index.png, 3-channel size x size), a meta.json naming
    every photo with its licence and every class region, and crops.csv listing every image."""
    import cv2
    out, meta = small
    classes = meta['classes']
    assert classes == sorted(classes) and len(classes) >= 4
    assert sorted(os.listdir(osp.join(out, 'train'))) == classes
    for split, count in (('train', 3), ('val', 2)):
        for name in classes:
            files = sorted(os.listdir(osp.join(out, split, name)))
            assert files == [f'{i:05d}.png' for i in range(count)]
    image = cv2.imread(osp.join(out, 'val', classes[0], '00000.png'), cv2.IMREAD_UNCHANGED)
    assert image.shape == (16, 16, 3)
    with open(osp.join(out, 'meta.json')) as f:
        stored = json.load(f)
    assert stored == json.loads(json.dumps(meta))
    assert set(stored['photos']) == {'brick', 'coins'}
    for photo in stored['photos'].values():
        assert photo['license'] and photo['source'].startswith('skimage.data.')
    assert [r['name'] for r in stored['regions']] == classes
    assert stored['fingerprint'] == natural_cls.fingerprint(
        **{k: v for k, v in SMALL.items()})
    previous = natural_cls.previous_generation(out)
    assert previous.fingerprint == stored['fingerprint']
    assert sorted(previous.files) == sorted(osp.join(out, p) for p in _digest(out))
    with open(osp.join(out, 'crops.csv')) as f:
        assert len(list(csv.DictReader(f))) == len(classes) * 5


def test_train_and_val_regions_are_disjoint(small):
    """Every crop window lies inside its region, a val window inside the region's middle square,
    a train window outside it; no train window shares a pixel with any val window of the same
    photo."""
    out, meta = small
    regions = {r['name']: r for r in meta['regions']}
    with open(osp.join(out, 'crops.csv')) as f:
        crops = list(csv.DictReader(f))
    windows = {'train': [], 'val': []}
    for crop in crops:
        x, y, side = int(crop['x']), int(crop['y']), int(crop['side'])
        region = regions[crop['class']]
        x0, y0, x1, y1 = region['box' if crop['split'] == 'train' else 'val_box']
        assert x0 <= x and x + side <= x1 and y0 <= y and y + side <= y1, crop
        if crop['split'] == 'train':
            u0, v0, u1, v1 = region['val_box']
            assert x + side <= u0 or u1 <= x or y + side <= v0 or v1 <= y, crop
        assert 16 <= side <= 24
        windows[crop['split']].append((crop['photo'], x, y, side))
    for photo, x, y, s in windows['train']:
        for photo2, u, v, t in windows['val']:
            if photo == photo2:
                assert x + s <= u or u + t <= x or y + s <= v or v + t <= y
    for region in meta['regions']:  # the val square is in the middle, a window's margin away
        (a0, b0, a1, b1), (c0, d0, c1, d1) = region['box'], region['val_box']
        assert c0 - a0 == a1 - c1 == d0 - b0 == b1 - d1 >= 24 and c1 - c0 == 24


def test_deterministic(small, tmp_path):
    """The same arguments give byte-identical files; another seed gives other crops."""
    out, _ = small
    again = tmp_path / 'again'
    natural_cls.generate_natural_classification(str(again), **SMALL)
    assert _digest(str(again)) == _digest(out)
    other = tmp_path / 'other'
    natural_cls.generate_natural_classification(str(other), **dict(SMALL, seed=1))
    first, second = _digest(out), _digest(str(other))
    assert first.keys() == second.keys()
    assert sum(first[k] != second[k] for k in first if k.endswith('.png')) > len(first) // 2


def test_mmpretrain_reads_it(small):
    """mmpretrain's CustomDataset finds the classes in meta's order and every image."""
    from mmpretrain.datasets import CustomDataset
    out, meta = small
    dataset = CustomDataset(data_root=out, data_prefix='val', pipeline=[])
    assert list(dataset.metainfo['classes']) == meta['classes']
    assert len(dataset) == 2 * len(meta['classes'])


def test_tool_is_idempotent_and_safe(tmp_path, capsys):
    """The tool skips a set generated with the same parameters and refuses a foreign folder."""
    import importlib.util
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(
        'make_natural_cls', osp.join(root, 'tools', 'make_natural_cls.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = str(tmp_path / 'set')
    args = ['--out', out, '--num-train', '1', '--num-val', '1', '--size', '16', '--cell', '128',
            '--val-size', '24', '--max-side', '256']
    tool.main(args)
    before = _digest(out)
    tool.main(args)
    assert 'already generated' in capsys.readouterr().out
    assert _digest(out) == before
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'keep.txt').write_text('x')
    with pytest.raises(DatasetError):
        tool.main(['--out', str(foreign)])
    assert (foreign / 'keep.txt').read_text() == 'x'


def test_photo_labels(tmp_path):
    """labels='photo': one class per photo, balanced, its crops cycling through its regions
    and taken from the same disjoint parts."""
    meta = natural_cls.generate_natural_classification(str(tmp_path), **dict(SMALL, labels='photo'))
    assert meta['classes'] == ['brick', 'coins'] and meta['labels'] == 'photo'
    regions = {r['name']: r for r in meta['regions']}
    with open(tmp_path / 'crops.csv') as f:
        crops = list(csv.DictReader(f))
    assert len(crops) == 2 * 5
    for crop in crops:
        assert regions[crop['region']]['photo'] == crop['photo'] == crop['class']
        x0, y0, x1, y1 = regions[crop['region']]['val_box']
        x, y, side = int(crop['x']), int(crop['y']), int(crop['side'])
        inside = x0 <= x and x + side <= x1 and y0 <= y and y + side <= y1
        apart = x + side <= x0 or x1 <= x or y + side <= y0 or y1 <= y
        assert inside if crop['split'] == 'val' else apart
    train = [c['region'] for c in crops if c['split'] == 'train' and c['class'] == 'brick']
    assert len(set(train)) == 3  # 3 crops, 3 different brick regions


def test_colour_and_no_jitter(tmp_path):
    """colour=True keeps a colour photo's channels (a grey one gets three equal ones, plus
    independent sensor noise); the grey default keeps its fingerprint."""
    import cv2
    meta = natural_cls.generate_natural_classification(
        str(tmp_path), **dict(SMALL, photos=('coffee', 'brick'), colour=True, jitter=0.0))
    assert meta['colour'] is True and meta['jitter'] == 0.0

    def spread(photo):  # the largest mean difference between the blue and red channels
        return max(np.abs(image[..., 0].astype(int) - image[..., 2]).mean() for image in (
            cv2.imread(str(tmp_path / 'train' / name / '00000.png'))
            for name in meta['classes'] if name.startswith(photo)))
    assert spread('coffee') > 10 and spread('brick') < 5  # (brick: sensor noise only)
    assert natural_cls.fingerprint(**SMALL) == natural_cls.fingerprint(
        **SMALL, colour=False, jitter=1.0)


def test_rejects_parts_smaller_than_a_window(tmp_path):
    with pytest.raises(ValueError):  # val square smaller than a 48-pixel window
        natural_cls.generate_natural_classification(str(tmp_path), size=32, val_size=40,
                                                    max_zoom=1.5, photos=('brick', ))
    with pytest.raises(ValueError):  # train ring (40 pixels) narrower than a 48-pixel window
        natural_cls.generate_natural_classification(str(tmp_path), size=32, cell=128,
                                                    val_size=48, photos=('brick', ))
