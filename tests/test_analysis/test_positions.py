"""Per-kernel-position numbers of one conv: spre_mmdet.analysis.positions."""
import numpy as np
import pytest
import torch

from spre_mmdet.analysis.positions import (analyze_layer, nm_position_sparsity,
                                           unstructured_position_sparsity)
from spre_mmdet.analysis.synthetic import synthetic_weight
from spre_mmdet.sparsity import nm_mask, spatial_mask


def _hand_weight():
    # (O=1, C=4, 2x2). Magnitudes 16..13 at (0,0), 12,11,1,2 at (0,1), 10,9,3,4 at (1,0),
    # 5..8 at (1,1); signs mixed so that only |w| matters.
    w = torch.zeros(1, 4, 2, 2)
    w[0, :, 0, 0] = torch.tensor([16., -15., 14., -13.])
    w[0, :, 0, 1] = torch.tensor([-12., 11., 1., -2.])
    w[0, :, 1, 0] = torch.tensor([10., -9., -3., 4.])
    w[0, :, 1, 1] = torch.tensor([5., -6., 7., -8.])
    return w


def test_unstructured_position_sparsity_hand_computed():
    """2:4 keeps |w| 16..9: all of (0,0), half of (0,1) and (1,0), none of (1,1)."""
    s = unstructured_position_sparsity(_hand_weight(), 2, 4)
    np.testing.assert_allclose(s, [[0.0, 0.5], [0.5, 1.0]])
    layer = analyze_layer('conv', _hand_weight(), 2, 4)
    np.testing.assert_array_equal(layer.spatial, [[1, 0], [0, 0]])  # only (0,0) below p = 0.5


@pytest.mark.parametrize('n,m', [(1, 4), (2, 4), (3, 4), (2, 8)])
def test_nm_position_sparsity_is_exactly_one_minus_n_over_m(n, m):
    """N:M per-position sparsity is 1 - N/M everywhere, even on a centre-heavy weight."""
    w = synthetic_weight(8, 16, 3, centre=5.0, cross=3.0, seed=1)
    np.testing.assert_allclose(nm_position_sparsity(w, n, m), np.full((3, 3), 1 - n / m))
    assert not np.allclose(unstructured_position_sparsity(w, n, m), 1 - n / m)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_spatial_from_tool_equals_spatial_mask(seed):
    """The tool's S (no stored buffer) is spatial_mask of the weight."""
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(seed))
    layer = analyze_layer('conv', w, 2, 4)
    np.testing.assert_array_equal(layer.spatial, spatial_mask(w, 2, 4).numpy())
    assert layer.spatial_source == 'computed' and layer.spatial_agrees


def test_mask_from_checkpoint_is_used():
    """A stored N:M mask B is used for the N:M column and the rep-branch density."""
    w = synthetic_weight(4, 8, 3)
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[:, 0::4] = True  # valid 1:4 pattern, unlike the magnitude mask
    layer = analyze_layer('conv', w, 1, 4, mask=mask)
    assert layer.nm_source == 'checkpoint' and not layer.notes
    np.testing.assert_allclose(layer.nm, np.full((3, 3), 0.75))
    np.testing.assert_allclose(layer.rep_density, 0.25 * layer.spatial)
    bad = analyze_layer('conv', w, 1, 4, mask=torch.ones_like(mask))
    assert bad.notes and 'not 1:4' in bad.notes[0]


def test_deployed_nm_weight_is_noted():
    """A weight that is already exactly N:M (deployed checkpoint) gets an explanatory note."""
    w = synthetic_weight(8, 8, 3)
    deployed = analyze_layer('conv', w * nm_mask(w, 2, 4), 2, 4)
    assert deployed.notes and 'already 2:4' in deployed.notes[0]
    assert not analyze_layer('conv', w, 2, 4).notes
