"""A natural-image classification set from the photographs scikit-image ships ("natural cls").

Each photograph of :data:`PHOTOS` (bundled inside the scikit-image wheel, read offline; the
licence of each, as scikit-image's own documentation states it, is recorded in ``meta.json``)
is converted to grey levels, scaled so that its longer side is at most ``max_side`` pixels, and
cut into a grid of ``cell x cell`` regions. Every region whose grey-level standard deviation
is at least ``min_std`` (not a flat sky or a black border) is one class, named
``<photo>_r<row>c<col>``. Neighbouring regions of the same texture (brick, grass, gravel, ...)
differ only in detail, so the labels ask for fine texture and structure, not for "which
photo": that is what makes the set hard enough for N:M sparsity to bind.
With ``labels='photo'`` each photo is one class instead (its crops cycle through its regions,
with the same train / validation parts).

Train and validation crops come from **disjoint** parts of each region: a ``val_size x
val_size`` square in the middle of the region is its validation part, the ring around it the
train part; no train window overlaps the validation square, so no validation pixel is ever
seen in training. With the validation part in the middle, the nearest training pixels of a
validation crop are its own class's (a validation band at a region's edge would lie next to
the neighbouring region's training pixels and score them instead). Each crop
is a square window of side ``size * U(1, max_zoom)`` (textures at several scales) at a
uniformly random position inside its part, resized to ``size x size`` (area averaging), with a
random contrast and brightness change (so the mean grey level of a region is no cue) and
Gaussian noise.

Written in the folder layout mmpretrain's ``CustomDataset`` reads::

    <out>/train/<class>/<index>.png
    <out>/val/<class>/<index>.png
    <out>/meta.json    parameters, fingerprint, photos (licence, source, shape), class regions
    <out>/crops.csv    every image's class, photo and crop window (photo coordinates)

Deterministic: each crop is drawn from its own RNG seeded by ``(seed, split, class, index)``,
with OpenCV's area resize and lossless PNG codec, so the same arguments and scikit-image
version give the same files. scikit-image is an optional dependency (``pip install
spre-mmdet[natural]``).
"""
import csv
import hashlib
import json
import os
import os.path as osp
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import DatasetError
from .generated import Generation, generation_meta

__all__ = ['PHOTOS', 'Region', 'load_photo', 'class_regions', 'render_crop',
           'generate_natural_classification', 'fingerprint', 'previous_generation']

#: The photographs used, each with its licence as scikit-image's documentation (the docstring
#: of ``skimage.data.<name>``) states it. Only images bundled in the wheel (no download) and
#: with a stated licence; left out: drawings and synthetic images (logo, colorwheel, horse,
#: checkerboard, phantom), images without a licence statement (moon, page, the Middlebury
#: motorcycle pair), the mostly black Hubble deep field and the 102-pixel microaneurysms crop.
PHOTOS: Dict[str, str] = {
    'astronaut': 'public domain (NASA; "No known copyright restrictions, released into the '
                 'public domain")',
    'brick': 'CC0 (CC0Textures "Bricks25")',
    'camera': 'CC0 (photographer Lav Varshney)',
    'cell': 'CC0 (quantitative phase image, Paul Mueller et al.)',
    'chelsea': 'CC0 (photographer Stefan van der Walt)',
    'clock': 'public domain (released by the photographer Stefan van der Walt)',
    'coffee': 'CC0 (photographer Rachel Michetti)',
    'coins': 'no known copyright restrictions (Brooklyn Museum collection)',
    'grass': 'CC0 (DeviantArt "Grass 01")',
    'gravel': 'CC0 (CC0Textures "Gravel04")',
    'immunohistochemistry': 'no known copyright restrictions (CMMI)',
    'retina': 'CC0 1.0 (Wikimedia Commons, Mikael Haggstrom)',
    'rocket': 'public domain (SpaceX)',
    'text': 'no known copyright restrictions, public domain (Wikipedia "Corner.png")',
}

_GENERATOR_VERSION = 2         # bump when the rendering changes (part of the fingerprint)
_SPLIT_CODE = {'train': 1, 'val': 2}
GENERATOR = 'spre_mmdet natural classification'  # meta.json marks folders it wrote


def _skimage_data():
    try:
        import skimage
        from skimage import data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DatasetError('The natural-image set needs scikit-image (its bundled photographs): '
                           '`pip install "spre-mmdet[natural]"` or `pip install scikit-image`'
                           ) from e
    return skimage.__version__, data


def load_photo(name: str, max_side: int = 512, colour: bool = False) -> np.ndarray:
    """Photo ``name`` of scikit-image's bundled data as grey levels (float64, 0..255), scaled
    (area averaging) so that its longer side is at most ``max_side``."""
    if name not in PHOTOS:
        raise ValueError(f'unknown photo {name!r}; choose from {sorted(PHOTOS)}')
    _, data = _skimage_data()
    image = np.asarray(getattr(data, name)())
    if image.ndim == 3:
        image = image[..., :3].astype(np.float64)
        if not colour:
            image = image @ np.array([0.299, 0.587, 0.114])
    elif colour:  # a grey photo in a colour set: three equal channels
        image = np.repeat(image[..., None], 3, axis=2)
    image = image.astype(np.float64)
    if image.max() <= 1.0:  # boolean or float images in [0, 1]
        image = image * 255.0
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image


@dataclass(frozen=True)
class Region:
    """One class: a ``cell x cell`` region (``box``) of a photo; ``val_box`` is its validation
    square in the middle, the rest of ``box`` its train part.

    Boxes are ``(x0, y0, x1, y1)`` (half-open) in the scaled photo's pixel coordinates.
    """

    name: str
    photo: str
    row: int
    col: int
    box: Tuple[int, int, int, int]
    val_box: Tuple[int, int, int, int]
    std: float


def class_regions(photos: Dict[str, np.ndarray], cell: int, val_size: int, min_std: float
                  ) -> List[Region]:
    """The classes: grid cells (centred in each photo) with grey-level std >= ``min_std``,
    sorted by name (= mmpretrain's label order)."""
    if not 0 < val_size < cell:
        raise ValueError(f'val_size must be in (0, cell={cell}), got {val_size}')
    regions = []
    for photo, image in photos.items():
        if image.ndim == 3:  # colour: regions chosen on the grey levels, as for a grey set
            image = image @ np.array([0.299, 0.587, 0.114])
        h, w = image.shape
        rows, cols = h // cell, w // cell
        y_off, x_off = (h - rows * cell) // 2, (w - cols * cell) // 2
        for r in range(rows):
            for c in range(cols):
                x0, y0 = x_off + c * cell, y_off + r * cell
                std = float(image[y0:y0 + cell, x0:x0 + cell].std())
                if std < min_std:
                    continue
                v = (cell - val_size) // 2
                regions.append(Region(
                    name=f'{photo}_r{r}c{c}', photo=photo, row=r, col=c,
                    box=(x0, y0, x0 + cell, y0 + cell),
                    val_box=(x0 + v, y0 + v, x0 + v + val_size, y0 + v + val_size),
                    std=round(std, 3)))
    return sorted(regions, key=lambda region: region.name)


def _overlaps(x: int, y: int, side: int, box: Tuple[int, int, int, int]) -> bool:
    return x < box[2] and box[0] < x + side and y < box[3] and box[1] < y + side


def render_crop(rng: np.random.Generator, image: np.ndarray, part: Tuple[int, int, int, int],
                size: int, max_zoom: float, avoid: Optional[Tuple[int, int, int, int]] = None,
                jitter: float = 1.0) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """One ``size x size`` uint8 crop (3 channels, in ``image``'s channel order) from ``part``
    of ``image``, its window not overlapping ``avoid``; returns it and its window
    ``(x, y, side)`` in photo coordinates. ``jitter`` scales the contrast (x1 +- 0.4) and
    brightness (+-30) changes (0: none)."""
    x0, y0, x1, y1 = part
    largest = min(x1 - x0, y1 - y0, int(np.floor(size * max_zoom)))
    if largest < size:
        raise ValueError(f'part {part} is smaller than a {size}-pixel crop')
    for _ in range(1000):
        side = int(rng.integers(size, largest + 1))
        x = int(rng.integers(x0, x1 - side + 1))
        y = int(rng.integers(y0, y1 - side + 1))
        if avoid is None or not _overlaps(x, y, side, avoid):
            break
    else:
        raise ValueError(f'no {size}-pixel window in {part} avoids {avoid}')
    crop = image[y:y + side, x:x + side]
    if side != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    mean = crop.mean()
    contrast, brightness = rng.uniform(0.6, 1.4), rng.uniform(-30, 30)
    crop = (crop - mean) * (1 + (contrast - 1) * jitter) + mean + brightness * jitter
    crop = crop + rng.normal(0, rng.uniform(0, 4), crop.shape)
    crop = np.clip(np.round(crop), 0, 255).astype(np.uint8)
    if crop.ndim == 2:
        crop = np.repeat(crop[..., None], 3, axis=2)
    return crop, (x, y, side)


def fingerprint(num_train: int, num_val: int, size: int, seed: int, cell: int, val_size: int,
                max_zoom: float, min_std: float, max_side: int,
                photos: Sequence[str] = tuple(PHOTOS), labels: str = 'region',
                colour: bool = False, jitter: float = 1.0) -> str:
    """Identifies the generator version and parameters (stored in ``meta.json``)."""
    params = dict(version=_GENERATOR_VERSION, photos=list(photos), num_train=num_train,
                  num_val=num_val, size=size, seed=seed, cell=cell, val_size=val_size,
                  max_zoom=max_zoom, min_std=min_std, max_side=max_side, labels=labels)
    if colour or jitter != 1.0:  # (the defaults keep their earlier fingerprint)
        params.update(colour=colour, jitter=jitter)
    text = json.dumps(params, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def generate_natural_classification(
        out: str, num_train: int = 100, num_val: int = 20, size: int = 24, seed: int = 0,
        cell: int = 128, val_size: int = 48, max_zoom: float = 1.5, min_std: float = 12.0,
        max_side: int = 512, photos: Sequence[str] = tuple(PHOTOS), labels: str = 'region',
        colour: bool = False, jitter: float = 1.0,
        progress: Optional[Callable[[int], None]] = None) -> dict:
    """Write the set into ``out`` (see the module doc); returns the meta data written.

    ``colour``: keep the photos' colours (default: grey levels); ``jitter``: scale of the
    contrast / brightness change of each crop (default 1, 0 for none).
    ``labels``: ``'region'`` (each region is a class, the default) or ``'photo'`` (each photo is
    a class; its crops cycle through its regions, the same disjoint parts).
    ``num_train`` / ``num_val`` are crops *per class*. ``val_size`` must hold the largest crop
    window (``size * max_zoom``), and so must the ring around it (the train part).
    """
    if size < 8:
        raise ValueError(f'size must be >= 8 pixels, got {size}')
    if max_zoom < 1.0:
        raise ValueError(f'max_zoom must be >= 1, got {max_zoom}')
    window = int(np.floor(size * max_zoom))
    if val_size < window or (cell - val_size) // 2 < window:
        raise ValueError(f'cell={cell}, val_size={val_size} cannot hold a validation window of '
                         f'up to {window} pixels in the middle and a ring of train windows of '
                         'that size around it')
    version, _ = _skimage_data()
    images = {name: load_photo(name, max_side, colour) for name in photos}
    regions = class_regions(images, cell, val_size, min_std)
    if not regions:
        raise DatasetError('no region passes min_std; lower --min-std or --cell')
    if labels == 'region':
        groups = [(region.name, [region]) for region in regions]
    elif labels == 'photo':  # crop i of a photo comes from its region i % (its regions)
        groups = [(name, [r for r in regions if r.photo == name]) for name in sorted(photos)]
        groups = [(name, members) for name, members in groups if members]
    else:
        raise ValueError(f"labels must be 'region' or 'photo', got {labels!r}")
    crops = []
    for split, count in (('train', num_train), ('val', num_val)):
        for label, (class_name, members) in enumerate(groups):
            folder = osp.join(out, split, class_name)
            os.makedirs(folder, exist_ok=True)
            for index in range(count):
                region = members[index % len(members)]
                part, avoid = ((region.box, region.val_box) if split == 'train'
                               else (region.val_box, None))
                rng = np.random.default_rng([seed, _SPLIT_CODE[split], label, index])
                image, (x, y, side) = render_crop(rng, images[region.photo], part, size,
                                                  max_zoom, avoid, jitter)
                name = f'{index:05d}.png'
                cv2.imwrite(osp.join(folder, name), image[..., ::-1])  # RGB -> BGR for OpenCV
                crops.append((split, class_name, name, region.name, region.photo, x, y, side))
                if progress is not None:
                    progress(1)
    with open(osp.join(out, 'crops.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(('split', 'class', 'file', 'region', 'photo', 'x', 'y', 'side'))
        writer.writerows(crops)
    fp = fingerprint(num_train, num_val, size, seed, cell, val_size, max_zoom, min_std,
                     max_side, photos, labels, colour, jitter)
    meta = dict(
        generator=GENERATOR, fingerprint=fp, generator_version=_GENERATOR_VERSION,
        scikit_image=version, num_train=num_train, num_val=num_val, size=size, seed=seed,
        cell=cell, val_size=val_size, max_zoom=max_zoom, min_std=min_std, max_side=max_side,
        photos={name: dict(license=PHOTOS[name], source=f'skimage.data.{name}()',
                           shape=list(images[name].shape[:2]),
                           classes=sum(r.photo == name for r in regions))
                for name in photos},
        labels=labels, colour=colour, jitter=jitter, classes=[name for name, _ in groups],
        regions=[asdict(r) for r in regions])
    with open(osp.join(out, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=1)
    return meta


def previous_generation(out: str) -> Optional[Generation]:
    """What an earlier generation wrote into ``out`` (from its ``meta.json``), or ``None`` if
    ``out`` holds no dataset of this generator."""
    meta = generation_meta(out, GENERATOR)
    if meta is None:
        return None
    files = [osp.join(out, 'meta.json'), osp.join(out, 'crops.csv')]
    for split in ('train', 'val'):
        for name in meta.get('classes', []):
            for index in range(int(meta.get(f'num_{split}', 0))):
                files.append(osp.join(out, split, name, f'{index:05d}.png'))
    return Generation(meta.get('fingerprint'), files)

