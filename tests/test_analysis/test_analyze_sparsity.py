"""The command line tools/analyze_sparsity.py (PNG plots, S as JSON, CSV, errors)."""
import csv
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

from spre_mmdet.analysis import find_kxk_convs, synthetic_state_dict
from spre_mmdet.errors import CheckpointError
from spre_mmdet.sparsity import spatial_mask

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TOOL = osp.join(ROOT, 'tools', 'analyze_sparsity.py')


def _tool():
    spec = importlib.util.spec_from_file_location('analyze_sparsity_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_pngs_json_csv(tmp_path, capsys):
    """The CLI on a tiny mmengine-style checkpoint writes PNGs, S as JSON, and a CSV."""
    state = synthetic_state_dict(num_layers=3)
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': state}, ckpt)
    out = tmp_path / 'out'
    assert _tool().main([str(ckpt), '--out-dir', str(out), '--no-progress']) == 0
    for name in ('overview.png', 'layers.png'):
        assert (out / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    masks = json.loads((out / 'spatial_masks.json').read_text())
    convs = find_kxk_convs(state, 'backbone.')
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
    torch.save(synthetic_state_dict(num_layers=1), ckpt)
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
