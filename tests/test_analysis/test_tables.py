"""Text output of the analysis: spre_mmdet.analysis.tables."""
import torch

from spre_mmdet.analysis.positions import NOISE_Z, analyze_layer
from spre_mmdet.analysis.synthetic import synthetic_weight
from spre_mmdet.analysis.tables import format_table


def test_random_weights_are_flagged_as_noise():
    """Random weights get the 'S decided by chance' note; centre/cross-heavy ones do not."""
    gen = torch.Generator().manual_seed(0)
    random = analyze_layer('rand', torch.randn(64, 64, 3, 3, generator=gen), 2, 4)
    structured = analyze_layer('cross', synthetic_weight(64, 64, 3), 2, 4)
    assert random.noise_z < NOISE_Z < structured.noise_z
    assert 'by chance' in format_table([random])
    assert 'by chance' not in format_table([structured])
