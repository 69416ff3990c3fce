"""The shape outlines both synthetic generators draw (spre_mmdet.datasets.shapes)."""
import numpy as np
import pytest

from spre_mmdet.datasets import shapes
from spre_mmdet.datasets.synthetic_cls import CLASSES as CLS_CLASSES
from spre_mmdet.datasets.synthetic_cls import _polygons
from spre_mmdet.datasets.synthetic_coco import _shape_polygon


def test_outlines():
    """Each outline has its vertices where its definition puts them."""
    assert np.allclose(np.linalg.norm(shapes.regular(7, 2.5, 0.3), axis=1), 2.5)
    star = shapes.star(3.0, 1.2)
    assert np.allclose(np.linalg.norm(star, axis=1), [3.0, 1.2] * 5)
    assert np.allclose(star[0], [0, -3.0])  # a point up (image y grows downwards)
    assert np.allclose(np.abs(shapes.square(2.0)), 2.0)
    cross = shapes.cross(3.0, 1.0)
    assert len(cross) == 12 and np.abs(cross).max() == 3.0 and set(np.abs(cross).ravel()) == {
        1.0, 3.0}
    ellipse = shapes.ellipse(2.0, 0.5, 16)
    assert np.allclose(np.ptp(ellipse, 0), [4.0, 2.0])
    turned = shapes.rotate(star, 0.7)
    assert np.allclose(np.linalg.norm(turned, axis=1), np.linalg.norm(star, axis=1))
    assert np.allclose(shapes.rotate(turned, -0.7), star)


def test_coco_circle_keeps_the_rotation_draw():
    """The COCO circle is not rotated but still draws its rotation, like every other shape,
    so the random stream (and with it every later object of the image) is unchanged."""
    rng, reference = np.random.default_rng(0), np.random.default_rng(0)
    circle = _shape_polygon('circle', 20.0, rng)
    reference.uniform(0, 2 * np.pi)
    assert rng.random() == reference.random()
    assert np.allclose(circle, shapes.regular(64, 10.0))


@pytest.mark.parametrize('name', CLS_CLASSES)
def test_classification_outlines_are_closed_polygons(name):
    """Every classification class has an outline of at least 3 distinct vertices."""
    outer, hole = _polygons(name, 10.0, np.random.default_rng(0))
    for polygon in (outer,) if hole is None else (outer, hole):
        assert polygon.shape[1] == 2 and len(np.unique(polygon.round(6), axis=0)) >= 3
