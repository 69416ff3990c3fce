"""SpRe's premise over seeds (spre_mmdet.analysis.premise) and its command line mode."""
import csv
import math

import numpy as np
import pytest
import torch
from scipy import stats

from spre_mmdet import analysis
from spre_mmdet.analysis import premise


def _weight(centre=3.0, cross=2.0, corner=1.0, shape=(16, 16), noise=0.0, seed=0):
    """A conv weight whose |w| is ``centre`` / ``cross`` / ``corner`` by position (signs
    random), plus optional noise."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([[corner, cross, corner], [cross, centre, cross],
                          [corner, cross, corner]])
    sign = torch.randint(0, 2, (*shape, 3, 3), generator=g) * 2 - 1
    return sign * (scale + noise * torch.rand((*shape, 3, 3), generator=g))


def test_position_magnitude_is_relative_to_the_layer_mean():
    w = _weight()
    mean = (3 + 4 * 2 + 4 * 1) / 9
    np.testing.assert_allclose(premise.position_magnitude(w),
                               np.array([[1, 2, 1], [2, 3, 2], [1, 2, 1]]) / mean)
    flat = torch.ones(4, 4, 3, 3)
    np.testing.assert_allclose(premise.position_magnitude(flat), np.ones((3, 3)))


def test_position_kept_follows_magnitude():
    """Pruning keeps the largest weights: at density 1/9 only the centre survives, at 5/9 the
    centre and the cross; a kernel without preferred positions keeps d everywhere."""
    w = _weight(noise=0.1)
    np.testing.assert_allclose(premise.position_kept(w, 1 / 9),
                               [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(premise.position_kept(w, 5 / 9),
                               [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    kept = premise.position_kept(torch.randn(64, 64, 3, 3, generator=torch.Generator()
                                             .manual_seed(0)), 0.5)
    assert np.abs(kept - 0.5).max() < 0.06


def test_regions():
    masks = premise.region_masks((3, 3))
    assert [int(m.sum()) for m in masks.values()] == [1, 4, 4]
    assert masks['centre'][1, 1] and masks['corners'][0, 0] and masks['cross'][0, 1]
    five = premise.region_masks((5, 5))
    assert [int(m.sum()) for m in five.values()] == [1, 8, 16]
    with pytest.raises(analysis.AnalysisError):
        premise.region_masks((2, 2))


def test_interval_is_the_student_t_interval():
    values = [1.0, 1.2, 1.1]
    got = premise.Interval.of(values)
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert got.mean == pytest.approx(1.1)
    assert (got.low, got.high) == pytest.approx((1.1 - half, 1.1 + half))
    single = premise.Interval.of([2.0])
    assert single.low is None and single.format() == '2.000'


def _state(seed, centre):
    w = _weight(centre=centre, noise=0.5, seed=seed)
    return {'backbone.conv1.weight': torch.randn(16, 3, 3, 3),  # stem: skipped
            'backbone.layer1.0.conv1.weight': w, 'backbone.layer1.0.conv2.weight': w * 2,
            'backbone.layer1.0.bn1.weight': torch.ones(16)}


def test_aggregate_over_seeds():
    """Per layer and for the mean of the layers: the regions' means over seeds, with the
    interval of the per-seed values; kept fractions divided by the density."""
    runs = []
    for seed, centre in enumerate((3.0, 3.5, 4.0)):
        layers, skipped = premise.premise_of_state_dict(_state(seed, centre),
                                                        densities=(1 / 9, 0.5))
        assert [la.name for la in layers] == ['backbone.layer1.0.conv1',
                                              'backbone.layer1.0.conv2']
        assert len(skipped) == 1 and 'conv1' in skipped[0]
        runs.append(layers)
    result = premise.aggregate('toy', runs)
    assert result.seeds == 3 and result.measures == ('magnitude', 1 / 9, 0.5)
    centre = result.regions[premise.ALL_LAYERS]['magnitude']['centre']
    per_seed = [float(np.mean([la.magnitude[1, 1] for la in run])) for run in runs]
    assert centre.values == pytest.approx(per_seed)
    assert centre.low < centre.mean < centre.high
    assert result.regions[premise.ALL_LAYERS][1 / 9]['centre'].mean == pytest.approx(9.0)
    assert result.regions[premise.ALL_LAYERS][1 / 9]['corners'].mean == pytest.approx(0.0)
    grid = result.positions['backbone.layer1.0.conv2'][1 / 9]
    assert grid[1, 1].mean == pytest.approx(1.0)  # positions hold the kept fraction itself
    table = premise.premise_table(result)
    assert '**toy** (3 seeds' in table and 'layer1.0.conv2' in table and '9.00' in table
    with pytest.raises(analysis.AnalysisError):
        premise.aggregate('bad', [runs[0], runs[1][:1]])


def test_cli_premise(tmp_path):
    """--premise writes the table, the CSV and the plot for each data set."""
    import importlib.util
    import os.path as osp
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    spec = importlib.util.spec_from_file_location(
        'analyze_sparsity', osp.join(root, 'tools', 'analyze_sparsity.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    paths = []
    for seed in range(2):
        path = tmp_path / f's{seed}.pth'
        torch.save({'state_dict': _state(seed, 3.0 + seed)}, path)
        paths.append(str(path))
    out = tmp_path / 'out'
    assert tool.main(['--out-dir', str(out), '--premise', 'a=' + ','.join(paths),
                      '--premise', f'b={paths[0]}', '--densities', '1/2,1/8']) == 0
    assert (out / 'premise.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    text = (out / 'premise.md').read_text()
    assert '**a** (2 seeds' in text and '**b** (1 seed;' in text
    with open(out / 'premise.csv') as f:
        rows = list(csv.DictReader(f))
    assert {r['set'] for r in rows} == {'a', 'b'}
    assert any(r['measure'] == 'kept_over_density_at_0.125' and r['where'] == 'centre'
               for r in rows)
    with pytest.raises(SystemExit):
        tool.main(['--premise', 'nolabel'])
