"""Finding and analysing the k x k convs of a state dict: spre_mmdet.analysis.state_dict."""
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from spre_mmdet.analysis.positions import position_sparsity
from spre_mmdet.analysis.state_dict import analyze_state_dict
from spre_mmdet.analysis.synthetic import synthetic_weight
from spre_mmdet.analysis.tables import format_table
from spre_mmdet.sparsity import SpReConv2d, refresh_masks, sparsify_layer, spatial_mask


def test_spatial_buffer_from_checkpoint_is_used():
    """A stored `spatial` buffer wins over spatial_mask, and a stale one is flagged."""
    w = synthetic_weight(8, 8, 3)
    stored = torch.zeros(3, 3)
    stored[0, 0] = 1.0  # deliberately unlike spatial_mask(w)
    state = {'backbone.conv.weight': w, 'backbone.conv.spatial': stored}
    (layer,), skipped = analyze_state_dict(state, 2, 4, 'backbone.')
    assert not skipped
    np.testing.assert_array_equal(layer.spatial, stored.numpy())
    assert layer.spatial_source == 'checkpoint' and not layer.spatial_agrees
    np.testing.assert_array_equal(layer.spatial_computed, spatial_mask(w, 2, 4).numpy())
    assert '*' in format_table([layer], skipped, 'backbone.')


def test_real_spre_conv_state_dict_uses_its_mask_and_spatial():
    """A real SpReConv2d's state dict is analysed with its own mask B and S, not recomputed ones."""
    module = nn.Sequential(OrderedDict(conv=nn.Conv2d(8, 4, 3, padding=1, bias=False),
                                       bn=nn.BatchNorm2d(4)))
    assert sparsify_layer(module, 'conv', 'srste', 2, 4, norm_name='bn', rep_gamma=1.0) is None
    refresh_masks(module, 0)
    conv = module.conv
    assert isinstance(conv, SpReConv2d)

    (layer,), skipped = analyze_state_dict(module.state_dict(), 2, 4, prefix='')

    assert not skipped and layer.name == 'conv' and not layer.notes
    assert layer.nm_source == 'checkpoint' and layer.spatial_source == 'checkpoint'
    np.testing.assert_array_equal(layer.nm, position_sparsity(conv.sparsity.mask))
    np.testing.assert_array_equal(layer.spatial, conv.spatial.numpy())
    np.testing.assert_allclose(layer.rep_density, (1 - layer.nm) * conv.spatial.numpy())
