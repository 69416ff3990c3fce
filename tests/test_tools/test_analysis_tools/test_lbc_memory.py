"""The LBC score-memory count (tools/analysis_tools/lbc_memory.py) against the real LBC layer."""
import math

import lbc_memory
import pytest
import torch
from torch import nn

from spre_mmdet.sparsity import SparseConv2d


@pytest.mark.parametrize('n, m', [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize('shape', [(64, 32, 3, 3), (256, 64, 1, 1)])
def test_score_bytes_of_one_conv_are_those_of_the_lbc_layer(shape, n, m):
    """One conv's counted score bytes equal C(M, N) * groups * 4 and the LBC layer's scores."""
    count = lbc_memory.score_count(shape, n, m)
    groups = math.prod(shape) // m
    assert count * 4 == math.comb(m, n) * groups * 4
    conv = nn.Conv2d(shape[1], shape[0], shape[2:], bias=False)
    scores = SparseConv2d.from_dense(conv, 'LBCMask', n, m).sparsity.scores
    assert scores.dtype == torch.float32
    assert scores.numel() * scores.element_size() == count * 4


def test_rows_count_every_nm_conv_of_resnet50_layer1_to_4():
    """The rows sum over all 52 convs of mmdet's ResNet-50 layer1-4 (23.45M weights)."""
    from mmdet.models.backbones import ResNet
    backbone = ResNet(depth=50)
    convs = [module for name, module in backbone.named_modules()
             if isinstance(module, nn.Conv2d) and name.startswith('layer')]
    weights = sum(module.weight.numel() for module in convs)
    rows = {row['pattern']: row for row in lbc_memory.memory_rows([(2, 4), (4, 8)])}
    for pattern, k in (('2:4', 6), ('4:8', 70)):
        row = rows[pattern]
        m = int(pattern.split(':')[1])
        assert (row['k'], row['convs'], row['weights']) == (k, len(convs), weights)
        assert row['scores'] == weights // m * k and row['ratio'] == k / m
        assert row['score_mb'] == row['scores'] * 4 / 2 ** 20
        assert row['adamw_mb'] == 2 * row['score_mb']
    assert len(convs) == 52 and round(weights / 1e6, 2) == 23.45


def test_main_prints_one_row_per_pattern(capsys):
    """main() parses --nm and prints one Markdown row per pattern."""
    rows = lbc_memory.main(['--nm', '2:4', '1:16'])
    out = capsys.readouterr().out
    assert [row['pattern'] for row in rows] == ['2:4', '1:16']
    assert '| 2:4 | 6 | 52 | 23.45M |' in out and '| 1:16 | 16 | 52 |' in out


def test_time_names_each_refresh_by_the_subsets_it_leaves(capsys):
    """--time times one conv's forward+backward under both learners and LBC's refreshes: the
    schedule's first step (6 -> 5 subsets at 2:4), a jump, and a refresh without removal."""
    lbc_memory.main(['--nm', '2:4', '--time'])
    out = capsys.readouterr().out
    for label in ('2:4 srste ', '2:4 lbc ', 'lbc refresh 6 -> 5', 'lbc refresh (no removal)'):
        assert label in out, label
