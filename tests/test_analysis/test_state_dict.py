"""Finding and analysing the k x k convs of a state dict: spre_mmdet.analysis.state_dict."""
import numpy as np
import torch

from spre_mmdet.analysis.state_dict import analyze_state_dict
from spre_mmdet.analysis.synthetic import synthetic_weight
from spre_mmdet.analysis.tables import format_table
from spre_mmdet.sparsity import spatial_mask


def test_spatial_buffer_from_checkpoint_is_used():
    """A stored `spatial` buffer wins over spatial_mask, and a stale one is flagged."""
    w = synthetic_weight(8, 8, 3)
    stored = torch.zeros(3, 3)
    stored[0, 0] = 1.0  # deliberately unlike spatial_mask(w)
    state = {'backbone.conv.weight': w, 'backbone.conv.spatial': stored,
             'backbone.conv.weight_rep': torch.randn_like(w)}
    (layer,), skipped = analyze_state_dict(state, 2, 4, 'backbone.')
    assert not skipped and layer.is_spre
    np.testing.assert_array_equal(layer.spatial, stored.numpy())
    assert layer.spatial_source == 'checkpoint' and not layer.spatial_agrees
    np.testing.assert_array_equal(layer.spatial_computed, spatial_mask(w, 2, 4).numpy())
    assert '*' in format_table([layer], skipped, 'backbone.')
