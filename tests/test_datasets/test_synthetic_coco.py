"""Tests for the synthetic COCO generator (spre_mmdet.datasets.synthetic_coco)."""
import filecmp
import json
import os
import os.path as osp
from collections import Counter

import cv2
import numpy as np
import pytest

from spre_mmdet.datasets import generate_synthetic_coco
from spre_mmdet.datasets.synthetic_coco import CLASSES, _image_seed, render_image

pycocotools = pytest.importorskip('pycocotools')
from pycocotools.coco import COCO  # noqa: E402

SIZE = (96, 112)  # (H, W): deliberately non-square
KW = dict(num_train=12, num_val=6, image_size=SIZE)


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy')
    a = generate_synthetic_coco(str(root / 'a'), seed=0, **KW)
    b = generate_synthetic_coco(str(root / 'b'), seed=0, **KW)
    c = generate_synthetic_coco(str(root / 'c'), seed=1, **KW)
    return a, b, c


def _files(root):
    out = []
    for d, _, fs in os.walk(root):
        out += [osp.relpath(osp.join(d, f), root) for f in fs]
    return sorted(out)


def _load(path):
    return COCO(path)


def test_layout(datasets):
    """The output has train/, val/ and annotations/instances_{train,val}.json."""
    a = datasets[0]
    assert osp.isfile(a['train_ann']) and osp.isfile(a['val_ann'])
    assert len(os.listdir(a['train_img_dir'])) == KW['num_train']
    assert len(os.listdir(a['val_img_dir'])) == KW['num_val']
    assert a['train_ann'].endswith(osp.join('annotations', 'instances_train.json'))


def test_same_seed_byte_identical(datasets):
    """Same seed and arguments -> byte-identical JSON and image files."""
    a, b, _ = datasets
    fa, fb = _files(a['root']), _files(b['root'])
    assert fa == fb
    _, mismatch, errors = filecmp.cmpfiles(a['root'], b['root'], fa, shallow=False)
    assert not mismatch and not errors


def test_different_seed_differs(datasets):
    """A different seed gives different images and annotations."""
    a, _, c = datasets
    assert open(a['train_ann'], 'rb').read() != open(c['train_ann'], 'rb').read()
    name = sorted(os.listdir(a['train_img_dir']))[0]
    assert (open(osp.join(a['train_img_dir'], name), 'rb').read()
            != open(osp.join(c['train_img_dir'], name), 'rb').read())


def test_coco_schema(datasets):
    """pycocotools loads both splits; required COCO fields are present and well-formed."""
    a = datasets[0]
    for split in ('train', 'val'):
        raw = json.load(open(a[f'{split}_ann']))
        coco = _load(a[f'{split}_ann'])
        assert [c['id'] for c in raw['categories']] == list(range(1, len(CLASSES) + 1))
        assert [c['name'] for c in raw['categories']] == list(CLASSES)
        for img in raw['images']:
            assert img['height'] == SIZE[0] and img['width'] == SIZE[1]
            arr = cv2.imread(osp.join(a[f'{split}_img_dir'], img['file_name']))
            assert arr.shape == (SIZE[0], SIZE[1], 3)
            assert len(coco.getAnnIds(imgIds=img['id'])) >= 1
        ids = [ann['id'] for ann in raw['annotations']]
        assert len(set(ids)) == len(ids)
        for ann in raw['annotations']:
            assert ann['iscrowd'] == 0
            assert isinstance(ann['segmentation'], list) and ann['segmentation']
            for poly in ann['segmentation']:
                assert len(poly) >= 6 and len(poly) % 2 == 0
            assert len(ann['bbox']) == 4 and ann['bbox'][2] > 0 and ann['bbox'][3] > 0


def test_masks_match_drawn_pixels(datasets):
    """Polygon masks (pycocotools) match the rendered visible object pixels with IoU > 0.9."""
    a = datasets[0]
    coco = _load(a['train_ann'])
    ious = []
    for i, img in enumerate(sorted(coco.imgs.values(), key=lambda x: x['id'])):
        rng = np.random.default_rng(_image_seed(0, 'train', i))
        drawn, inst, objs = render_image(rng, *SIZE)
        # the re-rendered image is exactly the written PNG, so ``inst`` describes that file
        assert np.array_equal(drawn, cv2.imread(osp.join(a['train_img_dir'], img['file_name'])))
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=img['id'])), key=lambda x: x['id'])
        assert len(anns) == len(objs)
        for k, (ann, obj) in enumerate(zip(anns, objs), 1):
            assert coco.cats[ann['category_id']]['name'] == obj['category']
            m = coco.annToMask(ann).astype(bool)
            gt = inst == k
            iou = (m & gt).sum() / (m | gt).sum()
            ious.append(iou)
            assert iou > 0.9, (img['file_name'], k, iou)
    assert np.mean(ious) > 0.95


def test_bbox_and_area_consistent(datasets):
    """bbox encloses the polygon mask and area agrees with the mask pixel count."""
    a = datasets[0]
    coco = _load(a['val_ann'])
    for ann in coco.anns.values():
        m = coco.annToMask(ann).astype(bool)
        ys, xs = np.nonzero(m)
        x, y, w, h = ann['bbox']
        assert xs.min() >= np.floor(x) - 1 and xs.max() <= np.ceil(x + w) + 1
        assert ys.min() >= np.floor(y) - 1 and ys.max() <= np.ceil(y + h) + 1
        assert x >= 0 and y >= 0 and x + w <= SIZE[1] and y + h <= SIZE[0]
        assert abs(ann['area'] - m.sum()) <= 0.1 * m.sum() + 4
        assert w * h >= ann['area'] * 0.99


def test_class_and_size_variety(datasets):
    """Every class occurs, objects per image vary, and object sizes span a wide range."""
    a = datasets[0]
    anns = json.load(open(a['train_ann']))['annotations']
    anns += json.load(open(a['val_ann']))['annotations']
    assert set(Counter(x['category_id'] for x in anns)) == set(range(1, len(CLASSES) + 1))
    per_img = Counter(x['image_id'] for x in anns)
    assert len(set(per_img.values())) >= 2
    sides = np.sqrt([x['area'] for x in anns])
    assert sides.max() / sides.min() > 2.0
    # objects are not all isolated: at least one pair of boxes overlaps (occlusion happens)
    overlaps = 0
    by_img = {}
    for x in anns:
        by_img.setdefault(x['image_id'], []).append(x['bbox'])
    for boxes in by_img.values():
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes[i], boxes[j]
                if min(x1 + w1, x2 + w2) > max(x1, x2) and min(y1 + h1, y2 + h2) > max(y1, y2):
                    overlaps += 1
    assert overlaps >= 1


def test_splits_disjoint(datasets):
    """Train and val have disjoint image ids, annotation ids and file names."""
    a = datasets[0]
    tr, va = json.load(open(a['train_ann'])), json.load(open(a['val_ann']))
    assert not {i['id'] for i in tr['images']} & {i['id'] for i in va['images']}
    assert not {x['id'] for x in tr['annotations']} & {x['id'] for x in va['annotations']}
    assert not ({i['file_name'] for i in tr['images']}
                & {i['file_name'] for i in va['images']})
    # and the pixels differ too
    t0 = cv2.imread(osp.join(a['train_img_dir'], tr['images'][0]['file_name']))
    v0 = cv2.imread(osp.join(a['val_img_dir'], va['images'][0]['file_name']))
    assert not np.array_equal(t0, v0)


# ------------------------------------------------------------------ photo backgrounds
PHOTO_SIZE = (64, 80)


@pytest.fixture(scope='module')
def photo_set(tmp_path_factory):
    pytest.importorskip('skimage')
    root = tmp_path_factory.mktemp('photos')
    return generate_synthetic_coco(str(root), seed=0, num_train=4, num_val=3,
                                   image_size=PHOTO_SIZE, backgrounds='photos')


def test_photo_parts_are_disjoint_and_cover_each_photo():
    """Per photograph, the train part is the first 3/4 along the longer side and the val part
    the rest: the boxes do not overlap and together are the whole photo."""
    pytest.importorskip('skimage')
    from spre_mmdet.datasets.natural_cls import PHOTOS
    from spre_mmdet.datasets.synthetic_coco import photo_parts
    train, val = photo_parts('train'), photo_parts('val')
    assert set(train) == set(val) == set(PHOTOS)
    for name in PHOTOS:
        (a, (ax0, ay0, ax1, ay1)), (b, (bx0, by0, bx1, by1)) = train[name], val[name]
        assert a.shape[:2] == (ay1 - ay0, ax1 - ax0) and b.shape[:2] == (by1 - by0, bx1 - bx0)
        overlap_x, overlap_y = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
        assert overlap_x <= 0 or overlap_y <= 0, name
        area = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0)
        assert area == max(ax1, bx1) * max(ay1, by1), name  # together: the whole photo
        long = max(ax1, bx1, ay1, by1)
        val_side = (bx1 - bx0) if bx1 - bx0 < ax1 else (by1 - by0)
        assert val_side == pytest.approx(long / 4, abs=1), name


def test_photo_backgrounds_come_from_their_split_and_masks_match(photo_set):
    """Each written image is exactly the render on a crop of its own split's photo parts (and
    not of the other split's), its polygons match the drawn objects, and the annotation files
    name every photo's licence."""
    from spre_mmdet.datasets.natural_cls import PHOTOS
    from spre_mmdet.datasets.synthetic_coco import photo_background, photo_parts
    for split in ('train', 'val'):
        other = 'val' if split == 'train' else 'train'
        own = photo_background([part for part, _ in photo_parts(split).values()])
        foreign = photo_background([part for part, _ in photo_parts(other).values()])
        coco = _load(photo_set[f'{split}_ann'])
        raw = json.load(open(photo_set[f'{split}_ann']))
        assert sorted(lic['name'].split(':')[0] for lic in raw['licenses']) == sorted(PHOTOS)
        assert json.loads(raw['info']['fingerprint'])['backgrounds'] == 'photos'
        for i, img in enumerate(sorted(coco.imgs.values(), key=lambda x: x['id'])):
            written = cv2.imread(osp.join(photo_set[f'{split}_img_dir'], img['file_name']))
            drawn, inst, objs = render_image(np.random.default_rng(_image_seed(0, split, i)),
                                             *PHOTO_SIZE, background=own)
            assert np.array_equal(drawn, written)
            elsewhere, _, _ = render_image(np.random.default_rng(_image_seed(0, split, i)),
                                           *PHOTO_SIZE, background=foreign)
            assert not np.array_equal(elsewhere, written)
            anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=img['id'])),
                          key=lambda x: x['id'])
            assert len(anns) == len(objs)
            for k, ann in enumerate(anns, 1):
                m, gt = coco.annToMask(ann).astype(bool), inst == k
                assert (m & gt).sum() / (m | gt).sum() > 0.9


def test_unknown_backgrounds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="backgrounds must be one of"):
        generate_synthetic_coco(str(tmp_path), num_train=1, num_val=1, backgrounds='noise')
    assert not any(tmp_path.iterdir())  # refused before anything is written
