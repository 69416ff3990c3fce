"""Per-kernel-position sparsity analysis: spre_mmdet.analysis.spatial, analyze_sparsity."""
import csv
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

from spre_mmdet.analysis import spatial as sp
from spre_mmdet.errors import CheckpointError
from spre_mmdet.sparsity import nm_mask, spatial_mask

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TOOL = osp.join(ROOT, 'tools', 'analyze_sparsity.py')


def _tool():
    spec = importlib.util.spec_from_file_location('analyze_sparsity_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    s = sp.unstructured_position_sparsity(_hand_weight(), 2, 4)
    np.testing.assert_allclose(s, [[0.0, 0.5], [0.5, 1.0]])
    layer = sp.analyze_layer('conv', _hand_weight(), 2, 4)
    np.testing.assert_array_equal(layer.spatial, [[1, 0], [0, 0]])  # only (0,0) below p = 0.5


@pytest.mark.parametrize('n,m', [(1, 4), (2, 4), (3, 4), (2, 8)])
def test_nm_position_sparsity_is_exactly_one_minus_n_over_m(n, m):
    """N:M per-position sparsity is 1 - N/M everywhere, even on a centre-heavy weight."""
    w = sp.synthetic_weight(8, 16, 3, centre=5.0, cross=3.0, seed=1)
    np.testing.assert_allclose(sp.nm_position_sparsity(w, n, m), np.full((3, 3), 1 - n / m))
    assert not np.allclose(sp.unstructured_position_sparsity(w, n, m), 1 - n / m)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_spatial_from_tool_equals_spatial_mask(seed):
    """The tool's S (no stored buffer) is spatial_mask of the weight."""
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(seed))
    layer = sp.analyze_layer('conv', w, 2, 4)
    np.testing.assert_array_equal(layer.spatial, spatial_mask(w, 2, 4).numpy())
    assert layer.spatial_source == 'computed' and layer.spatial_agrees


def test_synthetic_centre_and_cross_get_lower_sparsity_and_s_one():
    """Large magnitudes at the centre and cross: lower unstructured sparsity and S = 1 there."""
    w = sp.synthetic_weight(32, 32, 3, centre=3.0, cross=2.0)
    layer = sp.analyze_layer('conv', w, 2, 4)
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    assert layer.unstructured[cross].max() < 0.5 < layer.unstructured[~cross].min()
    assert layer.unstructured[1, 1] == layer.unstructured.min()
    np.testing.assert_array_equal(layer.spatial, cross.astype(float))
    np.testing.assert_allclose(layer.block_density, np.where(cross, 1.0, 0.5))


def test_spatial_buffer_from_checkpoint_is_used():
    """A stored `spatial` buffer wins over spatial_mask, and a stale one is flagged."""
    w = sp.synthetic_weight(8, 8, 3)
    stored = torch.zeros(3, 3)
    stored[0, 0] = 1.0  # deliberately unlike spatial_mask(w)
    state = {'backbone.conv.weight': w, 'backbone.conv.spatial': stored,
             'backbone.conv.weight_rep': torch.randn_like(w)}
    (layer,), skipped = sp.analyze_state_dict(state, 2, 4, 'backbone.')
    assert not skipped and layer.is_spre
    np.testing.assert_array_equal(layer.spatial, stored.numpy())
    assert layer.spatial_source == 'checkpoint' and not layer.spatial_agrees
    np.testing.assert_array_equal(layer.spatial_computed, spatial_mask(w, 2, 4).numpy())
    assert '*' in sp.format_table([layer], skipped, 'backbone.')


def test_mask_from_checkpoint_is_used():
    """A stored N:M mask B is used for the N:M column and the rep-branch density."""
    w = sp.synthetic_weight(4, 8, 3)
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[:, 0::4] = True  # valid 1:4 pattern, unlike the magnitude mask
    layer = sp.analyze_layer('conv', w, 1, 4, mask=mask)
    assert layer.nm_source == 'checkpoint' and not layer.notes
    np.testing.assert_allclose(layer.nm, np.full((3, 3), 0.75))
    np.testing.assert_allclose(layer.rep_density, 0.25 * layer.spatial)
    bad = sp.analyze_layer('conv', w, 1, 4, mask=torch.ones_like(mask))
    assert bad.notes and 'not 1:4' in bad.notes[0]


def test_cli_writes_pngs_json_csv(tmp_path, capsys):
    """The CLI on a tiny mmengine-style checkpoint writes PNGs, S as JSON, and a CSV."""
    state = sp.synthetic_state_dict(num_layers=3)
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': state}, ckpt)
    out = tmp_path / 'out'
    assert _tool().main([str(ckpt), '--out-dir', str(out), '--no-progress']) == 0
    for name in ('overview.png', 'layers.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    masks = json.loads((out / 'spatial_masks.json').read_text())
    convs = sp.find_kxk_convs(state, 'backbone.')
    assert sorted(masks) == sorted(c for c in convs if c != 'backbone.conv1')  # 3-channel stem
    for name, s in masks.items():
        expected = state.get(name + '.spatial', spatial_mask(state[name + '.weight'], 2, 4))
        np.testing.assert_array_equal(s, expected.numpy())
    rows = list(csv.DictReader(open(out / 'position_sparsity.csv')))
    assert len(rows) == 9 * (3 + 1)  # 3 layers + overall[3x3], 9 positions each
    assert all(float(r['nm_sparsity']) == 0.5 for r in rows)
    printed = capsys.readouterr().out
    assert 'overall[3x3]' in printed and 'skipped: backbone.conv1' in printed
    assert str(out / 'overview.png') in printed


@pytest.mark.slow  # runs the tool in a subprocess
def test_cli_errors_clearly(tmp_path):
    """Bad prefix, missing file and invalid N:M give one-line errors, not tracebacks."""
    ckpt = tmp_path / 'tiny.pth'
    torch.save(sp.synthetic_state_dict(num_layers=1), ckpt)
    proc = subprocess.run([sys.executable, TOOL, str(ckpt), '--prefix', 'neck.'],
                          capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert "under prefix 'neck.'" in proc.stderr and "'backbone.'" in proc.stderr
    assert '--prefix' in proc.stderr
    tool = _tool()
    with pytest.raises(CheckpointError, match='not found'):
        tool.main([str(tmp_path / 'missing.pth')])
    with pytest.raises(SystemExit):
        tool.parse_args([str(ckpt), '--n', '4', '--m', '4'])


def test_random_weights_are_flagged_as_noise():
    """Random weights get the 'S decided by chance' note; centre/cross-heavy ones do not."""
    gen = torch.Generator().manual_seed(0)
    random = sp.analyze_layer('rand', torch.randn(64, 64, 3, 3, generator=gen), 2, 4)
    structured = sp.analyze_layer('cross', sp.synthetic_weight(64, 64, 3), 2, 4)
    assert random.noise_z < sp.NOISE_Z < structured.noise_z
    assert 'by chance' in sp.format_table([random])
    assert 'by chance' not in sp.format_table([structured])


def test_deployed_nm_weight_is_noted():
    """A weight that is already exactly N:M (deployed checkpoint) gets an explanatory note."""
    w = sp.synthetic_weight(8, 8, 3)
    deployed = sp.analyze_layer('conv', w * nm_mask(w, 2, 4), 2, 4)
    assert deployed.notes and 'already 2:4' in deployed.notes[0]
    assert not sp.analyze_layer('conv', w, 2, 4).notes
