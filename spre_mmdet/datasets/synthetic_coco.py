"""Deterministic synthetic COCO-format instance-segmentation dataset ("toy COCO").

Small images with a few coloured shapes (circle, square, triangle, ellipse, star, cross) on
textured, noisy backgrounds. Objects may partially occlude each other; every annotation
describes the *visible* part of its object (the polygon is traced from the final instance map),
so ``pycocotools`` masks match the drawn pixels. Only numpy, OpenCV and the standard library
are used (no mmengine / pycocotools needed to generate).

Rendering is done at ``SUPERSAMPLE`` x resolution and area-downsampled, which gives
anti-aliased edges and sub-pixel accurate polygons. The per-pixel instance map at 1x is the
majority vote of the super-sampled label map; it is what :func:`render_image` returns as the
ground truth the annotations are checked against.

Backgrounds are synthetic (a colour, an illumination gradient, blotches and strokes) or, with
``backgrounds='photos'``, crops of the photographs scikit-image ships (the natural-image sets'
:data:`~spre_mmdet.datasets.natural_cls.PHOTOS`, in colour): training images take their
background from the first three quarters of each photo along its longer side, validation
images from the last quarter, so no validation background pixel is seen in training.

Same arguments -> byte-identical output (PNG images, JSON annotations). Each image is drawn
from its own RNG seeded by ``(seed, split, index)``, so ``num_train`` does not change the
content of the val split and vice versa.
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from . import shapes
from .generated import Generation

__all__ = ['CLASSES', 'BACKGROUNDS', 'generate_synthetic_coco', 'render_image',
           'dataset_fingerprint', 'photo_parts', 'photo_background', 'previous_generation']

#: Category names; category ids are ``index + 1``.
CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'ellipse', 'star', 'cross')

# Base hue (degrees) per class. circle/ellipse and star/triangle are deliberately close in
# hue so colour alone does not separate every class -- shape has to be used as well.
_BASE_HUE = {'circle': 0, 'ellipse': 25, 'square': 215, 'triangle': 110, 'star': 60,
             'cross': 285}
_HUE_JITTER = 18.0        # +- degrees around the base hue
_RANDOM_COLOUR_P = 0.1    # fraction of objects with a completely random colour

SUPERSAMPLE = 4           # render at 4x, then area-downsample
_MIN_VISIBLE = 0.6        # an occluded object keeps at least this fraction of its area
_MIN_POLY_IOU = 0.97      # traced polygon vs. visible mask (hi-res) -- rejects holes/slivers

_GENERATOR_VERSION = 1    # bump when the rendering changes (part of the fingerprint)
#: ``info.description`` of the annotation files: marks a folder's files as this generator's
DESCRIPTION = 'spre-mmdet synthetic toy COCO (shapes)'
SPLITS = ('train', 'val')
#: what the objects are drawn on: generated backgrounds, or crops of scikit-image's photographs
BACKGROUNDS = ('synthetic', 'photos')
#: the share of each photo, along its longer side, that validation backgrounds come from
PHOTO_VAL_SHARE = 0.25


# --------------------------------------------------------------------------------------------
# shapes (all as polygons in continuous pixel coordinates, pixel (i, j) covers [j, j+1]x[i, i+1])
# --------------------------------------------------------------------------------------------
def _shape_polygon(name: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """Polygon (K, 2) centred at the origin with bounding extent about ``size`` pixels."""
    r = size / 2.0
    rot = rng.uniform(0, 2 * np.pi)  # drawn for every shape: the circle's keeps the draw order
    if name == 'circle':
        return shapes.regular(64, r)
    if name == 'ellipse':
        pts = shapes.ellipse(r, rng.uniform(0.4, 0.65), 64)
    elif name == 'square':
        aspect = rng.uniform(0.8, 1.25)   # squares and mildly rectangular boxes
        pts = shapes.square(r * 0.75) * np.array([aspect, 1 / aspect])
    elif name == 'triangle':
        pts = shapes.regular(3, r, -np.pi / 2)
        pts[:, 1] += r * 0.25
    elif name == 'star':
        pts = shapes.star(r, r * rng.uniform(0.4, 0.5))
    elif name == 'cross':
        pts = shapes.cross(r, r * rng.uniform(0.28, 0.4))
    else:  # pragma: no cover
        raise ValueError(name)
    return shapes.rotate(pts, rot)


# --------------------------------------------------------------------------------------------
# colours / textures
# --------------------------------------------------------------------------------------------
def _hsv_to_bgr(h_deg: float, s: float, v: float) -> np.ndarray:
    hsv = np.array([[[(h_deg % 360) / 2.0, s * 255, v * 255]]], np.float32)
    hsv = np.clip(np.round(hsv), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, ch: int = 1):
    g = rng.standard_normal((cells + 1, cells + 1, ch)).astype(np.float32)
    out = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, ch)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = _hsv_to_bgr(rng.uniform(0, 360), rng.uniform(0.0, 0.35), rng.uniform(0.3, 0.8))
    img = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    # linear illumination gradient
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    grad = (np.cos(ang) * xx / w + np.sin(ang) * yy / h)
    img += (grad * rng.uniform(-40, 40))[..., None]
    # low-frequency coloured blotches + mid-frequency texture
    img += _smooth_noise(rng, h, w, int(rng.integers(2, 5)), 3) * rng.uniform(5, 25)
    img += _smooth_noise(rng, h, w, int(rng.integers(8, 24)), 1) * rng.uniform(3, 15)
    # a few grey distractor strokes (not objects)
    for _ in range(int(rng.integers(0, 4))):
        p1 = rng.uniform(0, [w, h])
        p2 = rng.uniform(0, [w, h])
        val = float(rng.uniform(40, 220))
        cv2.line(img, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), (val, val, val),
                 int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def photo_parts(split: str, max_side: int = 512
                ) -> Dict[str, Tuple[np.ndarray, Tuple[int, int, int, int]]]:
    """The background source of ``split``: per photograph, its part for that split (BGR
    float32, 0..255) and the part's box ``(x0, y0, x1, y1)`` in the photo scaled to
    ``max_side``. ``'train'`` is the first ``1 - PHOTO_VAL_SHARE`` of the photo along its
    longer side, ``'val'`` the rest: the two parts never overlap."""
    from .natural_cls import PHOTOS, load_photo
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    parts = {}
    for name in PHOTOS:
        photo = load_photo(name, max_side=max_side, colour=True)[..., ::-1].astype(np.float32)
        h, w = photo.shape[:2]
        long = max(h, w)
        cut = int(round(long * (1 - PHOTO_VAL_SHARE)))
        start, stop = (0, cut) if split == 'train' else (cut, long)
        box = (start, 0, stop, h) if w >= h else (0, start, w, stop)
        parts[name] = (np.ascontiguousarray(photo[box[1]:box[3], box[0]:box[2]]), box)
    return parts


def photo_background(parts: Sequence[np.ndarray]
                     ) -> Callable[[np.random.Generator, int, int], np.ndarray]:
    """A background drawer for :func:`render_image`: a window of a random one of ``parts``
    (BGR float32 images), of the image's aspect ratio and 50-100% of the largest such window
    that fits, at a random position, mirrored at random, resized to the image."""
    parts = list(parts)

    def draw(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        part = parts[int(rng.integers(len(parts)))]
        ph, pw = part.shape[:2]
        scale = rng.uniform(0.5, 1.0) * min(ph / h, pw / w)
        wh, ww = max(1, min(ph, int(round(h * scale)))), max(1, min(pw, int(round(w * scale))))
        y0, x0 = int(rng.integers(ph - wh + 1)), int(rng.integers(pw - ww + 1))
        window = part[y0:y0 + wh, x0:x0 + ww]
        if rng.random() < 0.5:
            window = window[:, ::-1]
        interpolation = cv2.INTER_AREA if wh > h else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(window), (w, h), interpolation=interpolation)

    return draw


def _object_colour(rng: np.random.Generator, name: str) -> np.ndarray:
    if rng.random() < _RANDOM_COLOUR_P:
        hue = rng.uniform(0, 360)
    else:
        hue = _BASE_HUE[name] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
    return _hsv_to_bgr(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))


# --------------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------------
def _trace_polygons(mask_hr: np.ndarray) -> List[np.ndarray]:
    """External contours of a hi-res mask as polygons in 1x continuous coordinates."""
    contours, _ = cv2.findContours(mask_hr.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        c = cv2.approxPolyDP(c, 0.7, True).reshape(-1, 2)
        if len(c) < 3:
            continue
        # hi-res pixel k has centre (k + 0.5) / S in 1x continuous coordinates
        polys.append((c.astype(np.float64) + 0.5) / SUPERSAMPLE)
    return polys


def _poly_fill_hr(polys: Sequence[np.ndarray], shape_hr: Tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape_hr, np.uint8)
    pts = [np.round(p * SUPERSAMPLE - 0.5).astype(np.int32) for p in polys]
    cv2.fillPoly(m, pts, 1)
    return m.astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def render_image(rng: np.random.Generator, height: int, width: int,
                 num_objects: Tuple[int, int] = (2, 5),
                 size_range: Tuple[float, float] = (0.12, 0.42),
                 max_tries: int = 60,
                 background: Optional[Callable[[np.random.Generator, int, int],
                                               np.ndarray]] = None):
    """Render one image, on ``background(rng, height, width)`` (a BGR float32 image; default:
    a synthetic one; :func:`photo_background` draws photo crops).

    Returns ``(img_bgr uint8 (H, W, 3), instance_map int32 (H, W), objects)`` where
    ``instance_map`` holds ``k + 1`` on the visible pixels of ``objects[k]`` (0 = background)
    and each object is a dict with ``category`` (name) and ``polygons`` (list of (K, 2) arrays in
    1x pixel coordinates describing the visible region).
    """
    S = SUPERSAMPLE
    hh, ww = height * S, width * S
    label = np.zeros((hh, ww), np.int32)       # hi-res instance map, 0 = background
    objs: List[dict] = []
    n_target = int(rng.integers(num_objects[0], num_objects[1] + 1))
    short = min(height, width)
    for _ in range(max_tries):
        if len(objs) >= n_target:
            break
        name = CLASSES[int(rng.integers(len(CLASSES)))]
        size = rng.uniform(*size_range) * short
        poly = _shape_polygon(name, size, rng)
        lo, hi = poly.min(0), poly.max(0)
        # keep the whole shape inside the image (with a 1px margin)
        cx = rng.uniform(1 - lo[0], width - 1 - hi[0]) if width - 2 > hi[0] - lo[0] else None
        cy = rng.uniform(1 - lo[1], height - 1 - hi[1]) if height - 2 > hi[1] - lo[1] else None
        if cx is None or cy is None:
            continue
        pts = np.round((poly + [cx, cy]) * S * 16).astype(np.int32)   # 4 fractional bits
        shape_mask = np.zeros((hh, ww), np.uint8)
        cv2.fillPoly(shape_mask, [pts], 1, cv2.LINE_8, shift=4)
        shape_mask = shape_mask.astype(bool)
        if shape_mask.sum() < (6 * S) ** 2:
            continue
        new_label = label.copy()
        new_id = len(objs) + 1
        new_label[shape_mask] = new_id
        # every earlier object must stay mostly visible and representable by polygons
        ok = True
        new_polys = {}
        for k, o in enumerate(objs, 1):
            vis = new_label == k
            if vis.sum() < _MIN_VISIBLE * o['full_area']:
                ok = False
                break
            if np.array_equal(vis, label == k):
                continue
            polys = _trace_polygons(vis)
            if not polys or _iou(_poly_fill_hr(polys, (hh, ww)), vis) < _MIN_POLY_IOU:
                ok = False
                break
            new_polys[k] = polys
        if not ok:
            continue
        polys = _trace_polygons(shape_mask)
        if not polys or _iou(_poly_fill_hr(polys, (hh, ww)), shape_mask) < _MIN_POLY_IOU:
            continue
        label = new_label
        for k, p in new_polys.items():
            objs[k - 1]['polygons'] = p
        objs.append(dict(category=name, polygons=polys, full_area=int(shape_mask.sum()),
                         colour=_object_colour(rng, name),
                         shade=rng.uniform(-35, 35, size=2)))

    # ---- paint (hi-res), then area-downsample
    bg = (background or _background)(rng, height, width)
    img_hr = cv2.resize(bg, (ww, hh), interpolation=cv2.INTER_LINEAR)
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32) / (S * short)
    for k, o in enumerate(objs, 1):
        m = label == k
        col = o['colour'] + (o['shade'][0] * (xx[m] - xx[m].mean())
                             + o['shade'][1] * (yy[m] - yy[m].mean()))[:, None] * 3
        img_hr[m] = col
    img = cv2.resize(img_hr, (width, height), interpolation=cv2.INTER_AREA)
    img += rng.normal(0, rng.uniform(4, 12), img.shape).astype(np.float32)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)

    # 1x instance map: majority vote over each SxS block
    onehot = np.zeros((len(objs) + 1, height, width), np.float32)
    lab_blocks = label.reshape(height, S, width, S)
    for k in range(len(objs) + 1):
        onehot[k] = (lab_blocks == k).mean(axis=(1, 3))
    inst = onehot.argmax(0).astype(np.int32)
    out_objs = [dict(category=o['category'], polygons=o['polygons']) for o in objs]
    return img, inst, out_objs


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------
def _poly_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _image_seed(seed: int, split: str, index: int) -> int:
    h = hashlib.sha256(f'{seed}/{split}/{index}'.encode()).digest()
    return int.from_bytes(h[:8], 'little')


def dataset_fingerprint(num_train: int, num_val: int, image_size: Tuple[int, int], seed: int,
                        num_objects: Tuple[int, int], size_range: Tuple[float, float],
                        backgrounds: str = 'synthetic') -> str:
    """String identifying the generation parameters (stored in the json ``info``); with photo
    backgrounds it includes the scikit-image version (the photographs come from it)."""
    _check_backgrounds(backgrounds)
    d = dict(version=_GENERATOR_VERSION, num_train=num_train, num_val=num_val,
             image_size=list(image_size), seed=seed, num_objects=list(num_objects),
             size_range=[float(s) for s in size_range])
    if backgrounds != 'synthetic':
        from .natural_cls import _skimage_data
        d.update(backgrounds=backgrounds, photo_val_share=PHOTO_VAL_SHARE,
                 skimage=_skimage_data()[0])
    return json.dumps(d, sort_keys=True)


def _check_backgrounds(backgrounds: str) -> None:
    if backgrounds not in BACKGROUNDS:
        raise ValueError(f'backgrounds must be one of {BACKGROUNDS}, got {backgrounds!r}')


def _write_split(out_dir: str, split: str, num: int, image_size, seed: int, num_objects,
                 size_range, fingerprint: str, id_offset: int,
                 progress: Optional[Callable[[], None]], backgrounds: str) -> str:
    h, w = image_size
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    images, annotations = [], []
    info = dict(description=DESCRIPTION, version='1.0', fingerprint=fingerprint)
    licenses, background = [], None
    if backgrounds == 'photos':
        from .natural_cls import PHOTOS
        parts = photo_parts(split)
        background = photo_background([part for part, _ in parts.values()])
        info['background_parts'] = {name: list(box) for name, (_, box) in parts.items()}
        licenses = [dict(id=i + 1, name=f'{name}: {PHOTOS[name]}', url='')
                    for i, name in enumerate(parts)]
    ann_id = id_offset * 100 + 1
    for i in range(num):
        rng = np.random.default_rng(_image_seed(seed, split, i))
        img, inst, objs = render_image(rng, h, w, num_objects=num_objects,
                                       size_range=size_range, background=background)
        img_id = id_offset + i + 1
        fname = f'{split}_{i:06d}.png'
        ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, 6])
        assert ok
        with open(osp.join(img_dir, fname), 'wb') as f:
            f.write(buf.tobytes())
        images.append(dict(id=img_id, file_name=fname, height=h, width=w))
        for k, o in enumerate(objs, 1):
            if not (inst == k).any():  # pragma: no cover - guarded by the visibility check
                continue
            polys = [p for p in o['polygons'] if len(p) >= 3]
            allp = np.concatenate(polys)
            x0, y0 = np.clip(allp.min(0), 0, [w, h])
            x1, y1 = np.clip(allp.max(0), 0, [w, h])
            annotations.append(dict(
                id=ann_id, image_id=img_id, category_id=CLASSES.index(o['category']) + 1,
                segmentation=[[round(float(v), 2) for v in p.reshape(-1)] for p in polys],
                area=round(sum(_poly_area(p) for p in polys), 2),
                bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                iscrowd=0))
            ann_id += 1
        if progress is not None:
            progress()
    coco = dict(
        info=info,
        licenses=licenses,
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=c, supercategory='shape')
                    for i, c in enumerate(CLASSES)])
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    ann_path = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    with open(ann_path, 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
    return ann_path


def generate_synthetic_coco(out_dir: str,
                            num_train: int = 400,
                            num_val: int = 80,
                            image_size: Tuple[int, int] = (128, 128),
                            seed: int = 0,
                            num_objects: Tuple[int, int] = (2, 5),
                            size_range: Tuple[float, float] = (0.12, 0.42),
                            progress: Optional[Callable[[], None]] = None,
                            backgrounds: str = 'synthetic') -> Dict[str, str]:
    """Write a synthetic COCO instance-segmentation dataset to ``out_dir``.

    Layout: ``train/*.png``, ``val/*.png``, ``annotations/instances_{train,val}.json``.

    Args:
        out_dir: output directory (created).
        num_train / num_val: number of images per split.
        image_size: ``(H, W)`` of every image.
        seed: base seed; same arguments give byte-identical files.
        num_objects: inclusive ``(min, max)`` objects per image (fewer if placement fails).
        size_range: object extent as a fraction of the short image side.
        progress: optional callable invoked once per written image.
        backgrounds: ``'synthetic'`` or ``'photos'`` (crops of scikit-image's photographs,
            train and validation from disjoint parts of each; needs scikit-image). The
            annotation files' ``licenses`` then name each photo's licence and ``info``
            the part of each photo the split's backgrounds come from.

    Returns:
        dict with ``root``, ``train_img_dir``, ``val_img_dir``, ``train_ann``, ``val_ann``.
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    fp = dataset_fingerprint(num_train, num_val, image_size, seed, tuple(num_objects),
                             tuple(size_range), backgrounds)
    os.makedirs(out_dir, exist_ok=True)
    # disjoint image ids: train 1..num_train, val 10_000_001.. (annotation ids likewise)
    train_ann = _write_split(out_dir, 'train', num_train, image_size, seed, num_objects,
                             size_range, fp, 0, progress, backgrounds)
    val_ann = _write_split(out_dir, 'val', num_val, image_size, seed, num_objects,
                           size_range, fp, 10_000_000, progress, backgrounds)
    return dict(root=out_dir, train_img_dir=osp.join(out_dir, 'train'),
                val_img_dir=osp.join(out_dir, 'val'), train_ann=train_ann, val_ann=val_ann)


def previous_generation(out_dir: str) -> Optional[Generation]:
    """What an earlier generation wrote into ``out_dir``: its annotation files (those whose
    ``info.description`` is this generator's) and the images they list, with the fingerprint
    both splits share (``None`` if a split is missing or they differ). ``None`` if no
    annotation file of this generator is there."""
    fingerprints, files = [], []
    for split in SPLITS:
        path = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        try:
            with open(path) as f:
                coco = json.load(f)
            info = coco['info']
            if info.get('description') != DESCRIPTION:
                continue
            names = [image['file_name'] for image in coco['images']]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        fingerprints.append(info.get('fingerprint'))
        files += [path, *(osp.join(out_dir, split, name) for name in names)]
    if not files:
        return None
    same = len(fingerprints) == len(SPLITS) and len(set(fingerprints)) == 1
    return Generation(fingerprints[0] if same else None, files)
