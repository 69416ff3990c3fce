"""The command line tools/analyze_sparsity.py (PNG plots, S as JSON, CSV, errors)."""
import csv
import json
import os.path as osp

import numpy as np
import pytest
import torch

from spre_mmdet.analysis import find_kxk_convs, synthetic_state_dict
from spre_mmdet.sparsity import spatial_mask
from tool_process import run_tool_process

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
TOOL = osp.join(ROOT, 'tools', 'analyze_sparsity.py')


def _run(*args, cwd, env):
    return run_tool_process([TOOL, *args], env, cwd=cwd, timeout=300)


@pytest.mark.slow  # runs the tool in a process of its own
def test_cli_writes_pngs_json_csv(tmp_path, subprocess_env):
    """The CLI on a tiny mmengine-style checkpoint writes PNGs, S as JSON, and a CSV."""
    state = synthetic_state_dict(num_layers=3)
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': state}, ckpt)
    out = tmp_path / 'out'
    proc = _run(ckpt, '--out-dir', out, '--no-progress', cwd=tmp_path, env=subprocess_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
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
    printed = proc.stdout
    assert 'overall[3x3]' in printed and 'skipped: backbone.conv1' in printed
    assert str(out / 'overview.png') in printed


@pytest.mark.slow  # runs the tool in a process of its own
def test_cli_errors_clearly(tmp_path, subprocess_env):
    """Bad prefix, missing file and invalid N:M give one-line errors, not tracebacks."""
    ckpt = tmp_path / 'tiny.pth'
    torch.save(synthetic_state_dict(num_layers=1), ckpt)
    proc = _run(ckpt, '--prefix', 'neck.', cwd=tmp_path, env=subprocess_env)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr
    assert "under prefix 'neck.'" in proc.stderr and "'backbone.'" in proc.stderr
    assert '--prefix' in proc.stderr
    proc = _run(tmp_path / 'missing.pth', cwd=tmp_path, env=subprocess_env)
    assert proc.returncode == 1 and 'Checkpoint not found' in proc.stderr
    assert 'Traceback' not in proc.stderr
    proc = _run(ckpt, '--n', '4', '--m', '4', cwd=tmp_path, env=subprocess_env)
    assert proc.returncode == 2 and '1 <= N < M' in proc.stderr
