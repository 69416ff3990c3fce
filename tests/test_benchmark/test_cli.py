import json
from pathlib import Path

import pytest
import torch
from torch import nn

from spre_mmdet.sparsity.nm import check_nm_tensor, nm_mask
from tool_process import run_tool_process

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
model = dict(backbone=dict(depth=18, init_cfg=None),
             neck=dict(in_channels=[64, 128, 256, 512]))
"""


@pytest.fixture(scope='module')
def deploy_model(tmp_path_factory):
    """A tiny ResNet-18 Mask R-CNN whose backbone convs (C % 4 == 0) are 2:4 (a deploy model)."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    root = tmp_path_factory.mktemp('deploy')
    config = root / 'mask_rcnn_r18_deploy.py'
    config.write_text(CONFIG)
    model = MODELS.build(Config.fromfile(str(config)).model)
    with torch.no_grad():
        for mod in model.backbone.modules():
            if isinstance(mod, nn.Conv2d) and mod.in_channels % 4 == 0:
                mod.weight.mul_(nm_mask(mod.weight, 2, 4))
                assert check_nm_tensor(mod.weight, 2, 4).ok
    checkpoint = root / 'deploy.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    return config, checkpoint


@pytest.mark.slow  # runs the tool in a process of its own
def test_cli_cpu_reports_validity_numerics_and_null_timings(deploy_model, tmp_path,
                                                           subprocess_env):
    """On CPU the CLI exits 0, says it needs an Ampere+ GPU, and writes JSON with null timings."""
    config, checkpoint = deploy_model
    out = tmp_path / 'out'
    proc = run_tool_process(
        [REPO / 'tools' / 'benchmark_sparse.py', config, checkpoint, '--input-size', '64', '64',
         '--scope', 'detector', '--device', 'cpu', '--out-dir', out, '--tensorrt'],
        subprocess_env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'needs an NVIDIA Ampere or newer GPU' in proc.stdout
    assert 'TensorRT' in proc.stdout
    assert 'dense only: 3 input channels are not divisible by M=4' in proc.stdout
    data = json.loads((out / 'benchmark_sparse.json').read_text())
    assert data['timings_available'] is False
    assert 'needs an NVIDIA Ampere or newer GPU' in data['timing_unavailable_reason']
    validity = {v['name']: v for v in data['validity']}
    assert validity['backbone.layer1.0.conv1']['valid']
    assert not validity['backbone.conv1']['candidate']
    assert not validity['neck.fpn_convs.0.conv']['valid']  # dense neck, reported with reason
    assert 'groups exceed' in validity['neck.fpn_convs.0.conv']['status']
    layers = data['layers']
    assert len(layers) == 19  # ResNet-18: 16 3x3 + 3 downsample 1x1 convs (stem excluded)
    for layer in layers:
        for key in ('dense_ms', 'sparse_ms', 'im2col_ms', 'sparse_gemm_ms', 'dense_gemm_ms',
                    'speedup', 'gemm_speedup'):
            assert layer[key] is None
        assert layer['numerics']['ok'] is True and layer['calls']
    for scope, row in data['end_to_end'].items():
        assert row['dense_ms'] is None and row['dispatch_ms'] is None
        assert row['all_sparse_ms'] is None
    assert data['end_to_end']['backbone+neck']['numerics_all_sparse']['ok'] is True
    assert (out / 'benchmark_sparse.csv').exists()
    assert (out / 'benchmark_sparse_speedup.png').stat().st_size > 0
