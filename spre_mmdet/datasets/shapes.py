"""The shape outlines that both synthetic generators draw, as polygons centred at the origin.

Each function takes its random parameters as arguments, so each generator keeps its own
parameter ranges and the order of its random draws (which fixes its byte-identical output),
while the geometry of a shape lives here once. Points are ``(x, y)`` rows of a float64
``(K, 2)`` array.
"""
import numpy as np

__all__ = ['regular', 'ellipse', 'square', 'star', 'cross', 'rotate']


def regular(n: int, r: float, phase: float = 0.0) -> np.ndarray:
    """The ``n`` vertices of a regular polygon of circumradius ``r``, the first at angle
    ``phase`` (a circle when ``n`` is large)."""
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def ellipse(r: float, ratio: float, points: int) -> np.ndarray:
    """An axis-aligned ellipse with semi-axes ``r`` (x) and ``r * ratio`` (y)."""
    return regular(points, r) * np.array([1.0, ratio])


def square(half: float) -> np.ndarray:
    """An axis-aligned square of half side ``half``."""
    return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * half


def star(r: float, inner: float) -> np.ndarray:
    """A five-pointed star with outer radius ``r`` and inner radius ``inner``, a point up."""
    points = np.empty((10, 2))
    points[0::2] = regular(5, r, -np.pi / 2)
    points[1::2] = regular(5, inner, -np.pi / 2 + np.pi / 5)
    return points


def cross(r: float, half_width: float) -> np.ndarray:
    """A plus sign whose arms reach ``r`` from the centre and are ``2 * half_width`` wide."""
    a, b = r, half_width
    return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                     [-b, b], [-a, b], [-a, -b], [-b, -b]], float)


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """``points`` rotated by ``angle`` (radians) about the origin."""
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])
