"""Deterministic synthetic image-classification dataset ("toy classification").

Each image shows one shape of one of :data:`CLASSES` at a random position, size, rotation and
colour on a textured, noisy background with a few distractor strokes. Colour carries no
information about the class (every hue is equally likely for every class), so the network has
to learn shape; the nuisance factors make the task need capacity, which is what lets N:M
sparsity bind (a task that a 1:16 network solves as well as a dense one cannot rank methods).

Written in the folder layout mmpretrain's ``CustomDataset`` reads::

    <out>/train/<class>/<index>.png
    <out>/val/<class>/<index>.png
    <out>/meta.json            (parameters and a fingerprint of the generator)

Only numpy and OpenCV's integer polygon fill and lossless PNG codec are used, so the same
arguments give byte-identical files on any OpenCV version. Each image is drawn from its own RNG
seeded by ``(seed, split, index)``: ``num_train`` does not change the val split.
"""
import hashlib
import json
import os
import os.path as osp
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np

from . import shapes
from .generated import Generation, generation_meta

__all__ = ['CLASSES', 'generate_synthetic_classification', 'render_sample', 'fingerprint',
           'previous_generation']

#: The classes, in label order (mmpretrain's CustomDataset sorts the folder names; these are
#: sorted already, so label ``i`` is ``CLASSES[i]``).
CLASSES: Tuple[str, ...] = ('arrow', 'circle', 'crescent', 'cross', 'ellipse', 'ring',
                            'semicircle', 'square', 'star', 'triangle')

SUPERSAMPLE = 4                # draw at 4x, then average 4x4 blocks (anti-aliasing)
_GENERATOR_VERSION = 1         # bump when the rendering changes (part of the fingerprint)
_SPLIT_CODE = {'train': 1, 'val': 2}
GENERATOR = 'spre_mmdet synthetic classification'  # meta.json marks folders it wrote


def _polygons(name: str, r: float, rng: np.random.Generator):
    """Outer polygon and optional hole of ``name``, radius ``r``, centred at the origin."""
    hole = None
    if name == 'circle':
        outer = shapes.regular(48, r)
    elif name == 'ring':
        outer = shapes.regular(48, r)
        hole = shapes.regular(48, r * rng.uniform(0.45, 0.65))
    elif name == 'ellipse':
        outer = shapes.ellipse(r, rng.uniform(0.45, 0.65), 48)
    elif name == 'square':
        outer = shapes.square(r * 0.72)
    elif name == 'triangle':
        outer = shapes.regular(3, r, -np.pi / 2)
    elif name == 'crescent':
        outer = shapes.regular(48, r)
        hole = shapes.regular(48, r * rng.uniform(0.8, 0.95)) + np.array(
            [r * rng.uniform(0.35, 0.5), 0.0])
    elif name == 'semicircle':
        t = np.linspace(0, np.pi, 25)
        outer = np.stack([r * np.cos(t), r * np.sin(t) - r * 0.4], 1)
    elif name == 'star':
        outer = shapes.star(r, r * rng.uniform(0.38, 0.5))
    elif name == 'cross':
        outer = shapes.cross(r, r * rng.uniform(0.28, 0.38))
    elif name == 'arrow':
        w, head = r * 0.25, r * 0.1
        outer = np.array([[-r, -w], [head, -w], [head, -2.2 * w], [r, 0], [head, 2.2 * w],
                          [head, w], [-r, w]], float)
    else:  # pragma: no cover
        raise ValueError(name)
    if name not in ('circle', 'ring'):  # (a rotated hole stays inside its shape)
        angle = rng.uniform(0, 2 * np.pi)
        outer = shapes.rotate(outer, angle)
        hole = None if hole is None else shapes.rotate(hole, angle)
    return outer, hole


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour (0..255 floats) from hue in [0, 1), saturation and value."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float64) * 255


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int):
    """Bilinearly upsampled ``(cells+1)^2`` Gaussian noise: a smooth random field."""
    grid = rng.standard_normal((cells + 1, cells + 1, channels))
    pos = np.linspace(0, cells, size)
    lo = np.minimum(pos.astype(int), cells - 1)
    frac = (pos - lo)[:, None]
    rows = grid[lo] * (1 - frac[..., None]) + grid[lo + 1] * frac[..., None]
    return rows[:, lo] * (1 - frac[None]) + rows[:, lo + 1] * frac[None]


def render_sample(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """One ``size x size`` RGB uint8 image of class ``CLASSES[label]``."""
    s = SUPERSAMPLE
    big = size * s
    # background: a colour, an illumination gradient, smooth blotches
    image = np.broadcast_to(_hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.25, 0.85)),
                            (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    image += ((np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(-50, 50))[..., None]
    image += _smooth_noise(rng, size, int(rng.integers(2, 5)), 3) * rng.uniform(5, 30)
    # distractor strokes: thin bars of random colour crossing the image
    canvas = np.zeros((big, big), np.uint8)
    for _ in range(int(rng.integers(0, 3))):
        canvas[:] = 0
        p = rng.uniform(0, big, (2, 2)).round().astype(np.int32)
        cv2.line(canvas, tuple(int(v) for v in p[0]), tuple(int(v) for v in p[1]), 1,
                 int(rng.integers(s, 2 * s)))
        alpha = canvas.reshape(size, s, size, s).mean((1, 3))[..., None]
        image = image * (1 - alpha) + _hsv(rng.random(), rng.uniform(0, 1),
                                           rng.uniform(0.2, 1)) * alpha
    # the object: any colour, with enough contrast to the local background
    radius = rng.uniform(0.25, 0.45) * size
    centre = rng.uniform(radius, size - radius, 2)
    outer, hole = _polygons(CLASSES[label], radius, rng)
    canvas[:] = 0
    cv2.fillPoly(canvas, [np.round((outer + centre) * s).astype(np.int32)], 1)
    if hole is not None:
        cv2.fillPoly(canvas, [np.round((hole + centre) * s).astype(np.int32)], 0)
    alpha = canvas.reshape(size, s, size, s).mean((1, 3))[..., None]
    behind = (image * alpha).sum((0, 1)) / max(alpha.sum(), 1e-6)
    colour = _hsv(rng.random(), rng.uniform(0.3, 1), rng.uniform(0.2, 1))
    if np.abs(colour - behind).max() < 90:  # too close to what it covers: flip the value
        colour = np.where(behind > 127, colour * 0.3, 255 - (255 - colour) * 0.3)
    image = image * (1 - alpha) + colour * alpha
    image += rng.normal(0, rng.uniform(2, 10), image.shape)  # sensor noise
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def fingerprint(num_train: int, num_val: int, size: int, seed: int) -> str:
    """Identifies the generator version and parameters (stored in ``meta.json``)."""
    text = json.dumps(dict(version=_GENERATOR_VERSION, classes=CLASSES, num_train=num_train,
                           num_val=num_val, size=size, seed=seed), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def generate_synthetic_classification(out: str, num_train: int = 8000, num_val: int = 2000,
                                      size: int = 24, seed: int = 0,
                                      progress: Optional[Callable[[int], None]] = None) -> str:
    """Write the dataset into ``out`` (see the module doc); returns its fingerprint.

    Labels are balanced: image ``i`` of a split has class ``i % len(CLASSES)``.
    """
    if size < 16:
        raise ValueError(f'size must be >= 16 pixels, got {size}')
    for split, count in (('train', num_train), ('val', num_val)):
        for name in CLASSES:
            os.makedirs(osp.join(out, split, name), exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
            label = index % len(CLASSES)
            image = render_sample(rng, size, label)
            path = osp.join(out, split, CLASSES[label], f'{index:06d}.png')
            cv2.imwrite(path, image[..., ::-1])  # RGB -> BGR for OpenCV
            if progress is not None:
                progress(1)
    fp = fingerprint(num_train, num_val, size, seed)
    with open(osp.join(out, 'meta.json'), 'w') as f:
        json.dump(dict(generator=GENERATOR, fingerprint=fp, classes=CLASSES,
                       num_train=num_train, num_val=num_val, size=size, seed=seed,
                       generator_version=_GENERATOR_VERSION), f, indent=1)
    return fp


def previous_generation(out: str) -> Optional[Generation]:
    """What an earlier generation wrote into ``out`` (from its ``meta.json``), or ``None`` if
    ``out`` holds no dataset of this generator."""
    meta = generation_meta(out, GENERATOR)
    if meta is None:
        return None
    classes = list(meta.get('classes', CLASSES))  # the classes of that generation
    files = [osp.join(out, 'meta.json')]
    for split in ('train', 'val'):
        for index in range(int(meta.get(f'num_{split}', 0))):
            files.append(osp.join(out, split, classes[index % len(classes)], f'{index:06d}.png'))
    return Generation(meta.get('fingerprint'), files)

