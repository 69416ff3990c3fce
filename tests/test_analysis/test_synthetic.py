"""Synthetic centre/cross-heavy weights: spre_mmdet.analysis.synthetic."""
import numpy as np

from spre_mmdet.analysis.positions import analyze_layer
from spre_mmdet.analysis.synthetic import synthetic_weight


def test_synthetic_centre_and_cross_get_lower_sparsity_and_s_one():
    """Large magnitudes at the centre and cross: lower unstructured sparsity and S = 1 there."""
    w = synthetic_weight(32, 32, 3, centre=3.0, cross=2.0)
    layer = analyze_layer('conv', w, 2, 4)
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    assert layer.unstructured[cross].max() < 0.5 < layer.unstructured[~cross].min()
    assert layer.unstructured[1, 1] == layer.unstructured.min()
    np.testing.assert_array_equal(layer.spatial, cross.astype(float))
    np.testing.assert_allclose(layer.block_density, np.where(cross, 1.0, 0.5))
