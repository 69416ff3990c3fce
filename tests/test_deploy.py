"""spre_mmdet.deploy: export of a sparse Mask R-CNN, both deploy forms of interspace convs.

Tolerance: deploy vs training-time FPN features, ``rtol=1e-4`` and ``atol=1e-4 * max|feature|``
(float32, same function summed in a different order).
"""
import os
import stat

import pytest
import torch
from mmengine.config import Config
from mmdet.registry import MODELS

from spre_mmdet.deploy import (DEPLOY_FILES, DEPLOY_MARKER, ExportError, check_export_target,
                               deploy_config, export_deploy)
from spre_mmdet.hooks import ReparameterizeHook
from spre_mmdet.sparsity import InterspaceConv2d, check_nm_tensor, refresh_masks

IP_TOY = 'configs/toy/mask_rcnn_r18_ip_srste_2x4_toy.py'


@pytest.fixture(scope='module')
def ip_detector(repo_root):
    """An interspace + SR-STE 2:4 Mask R-CNN R-18 with a moved basis and final masks."""
    cfg = Config.fromfile(str(repo_root / IP_TOY))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, InterspaceConv2d):
                layer.basis.add_(0.1 * torch.randn_like(layer.basis))
    refresh_masks(model, 0)
    model.eval()
    return cfg, model


def build_deployed(out):
    cfg = Config.fromfile(str(out / 'deploy_config.py'))
    model = MODELS.build(cfg.model)
    state = torch.load(out / 'deploy.pth', map_location='cpu', weights_only=True)
    model.load_state_dict(state['state_dict'], strict=True)
    model.eval()
    return cfg, model, state['meta']


def assert_same_features(model, deployed):
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(model.extract_feat(x), deployed.extract_feat(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


def test_basis_form_export_is_nm_loads_and_matches(ip_detector, tmp_path):
    """Default export: interspace convs as basis conv + exactly 2:4 1x1, built by the deploy
    config (SparseResNet deploy=True, imports spre_mmdet); same features as training."""
    cfg, model = ip_detector
    paths = export_deploy(model, cfg, str(tmp_path / 'basis'))
    deploy_cfg, deployed, meta = build_deployed(tmp_path / 'basis')
    assert meta['interspace_form'] == 'basis'
    assert deploy_cfg.model.backbone.type == 'SparseResNet'
    assert deploy_cfg.model.backbone.sparsity.deploy is True
    assert 'learner' not in deploy_cfg.model.backbone.sparsity
    assert deploy_cfg.custom_imports.imports[0] == 'spre_mmdet'
    assert not any(h.type in ('SparsityHook', 'ReparameterizeHook')
                   for h in deploy_cfg.get('custom_hooks', []))
    gemms = [m.gemm.weight for m in deployed.backbone.modules() if hasattr(m, 'gemm')]
    assert len(gemms) == 16 and all(check_nm_tensor(w, 2, 4).ok for w in gemms)
    assert_same_features(model, deployed)
    report = open(paths['sparsity_report.txt']).read()
    assert '16 interspace convs exported in BASIS form' in report
    assert report.count('srste+interspace') == 16
    layers = [line for line in report.splitlines() if line.startswith('backbone.layer')]
    assert len(layers) == 19 and all('2:4 valid' in line for line in layers)  # 16 + 3 downsample


def test_merged_form_export_is_stock_and_matches(ip_detector, tmp_path):
    """interspace_form='merged': a stock ResNet config without spre_mmdet; same features; the
    report says the 3x3s are merged and not 2:4, and which layers are."""
    cfg, model = ip_detector
    paths = export_deploy(model, cfg, str(tmp_path / 'merged'), interspace_form='merged')
    deploy_cfg, deployed, meta = build_deployed(tmp_path / 'merged')
    assert meta['interspace_form'] == 'merged'
    assert deploy_cfg.model.backbone.type == 'ResNet'
    assert 'spre_mmdet' not in open(paths['deploy_config.py']).read()
    assert_same_features(model, deployed)
    report = open(paths['sparsity_report.txt']).read()
    assert 'exported in MERGED form' in report
    rows = [line for line in report.splitlines() if 'srste+interspace' in line]
    assert len(rows) == 16 and all('merged into a dense k x k conv' in row and
                                   'not N:M by design' in row for row in rows)
    records = {r['name']: r for r in meta['sparse_layers']}
    assert sum(not r['nm'] for r in records.values()) == 16 and len(records) == 19
    downsample = [line for line in report.splitlines() if 'downsample.0 ' in line]
    assert downsample and all(' srste ' in row and '2:4 valid' in row for row in downsample)


def test_unknown_form_is_refused_and_nothing_written(ip_detector, tmp_path):
    """A bad interspace_form raises ExportError naming the choices; the hook refuses it when
    built, before any training."""
    cfg, model = ip_detector
    with pytest.raises(ExportError, match="'basis', 'merged'"):
        export_deploy(model, cfg, str(tmp_path / 'out'), interspace_form='fused')
    assert not (tmp_path / 'out').exists()
    with pytest.raises(ExportError, match='merged'):
        ReparameterizeHook(interspace_form='dense')
    with pytest.raises(ExportError, match='merged'):
        deploy_config(cfg, 'fused')


def test_non_interspace_config_ignores_the_form(repo_root):
    """Without interspace convs both forms give the same stock config (no spre_mmdet)."""
    cfg = Config.fromfile(str(repo_root / 'configs/toy/mask_rcnn_r18_spre_2x4_toy.py'))
    basis, merged = deploy_config(cfg, 'basis'), deploy_config(cfg, 'merged')
    assert basis.to_dict() == merged.to_dict()
    assert basis.model.backbone.type == 'ResNet' and 'custom_imports' not in basis


def test_config_that_does_not_fit_the_checkpoint_is_refused(ip_detector, tmp_path):
    """If the written config would not build the exported structure (here: the config says no
    interspace), the export fails with ExportError before writing anything."""
    cfg, model = ip_detector
    wrong = Config(cfg.to_dict())
    wrong.model.backbone.sparsity.interspace = None
    with pytest.raises(ExportError, match='does not match the deploy checkpoint'):
        export_deploy(model, wrong, str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the export target
def test_target_holding_foreign_files_is_refused_even_with_force(tmp_path):
    """A folder with files the export did not write (checkpoints, anything) is refused, with or
    without force, and nothing in it is touched."""
    (tmp_path / 'epoch_12.pth').write_bytes(b'weights')
    for force in (False, True):
        with pytest.raises(ExportError, match='did not write .*epoch_12.pth'):
            check_export_target(str(tmp_path), force=force)
    assert (tmp_path / 'epoch_12.pth').read_bytes() == b'weights'


@pytest.mark.parametrize('where', ['input', 'cwd', 'cwd-parent', 'empty'])
def test_target_holding_input_or_current_folder_is_refused(tmp_path, monkeypatch, where):
    """A target that is, or contains, the input checkpoint or the current folder is refused."""
    work = tmp_path / 'work'
    (work / 'sub').mkdir(parents=True)
    ckpt = work / 'epoch_1.pth'
    ckpt.write_bytes(b'x')
    monkeypatch.chdir(work / 'sub')
    target = {'input': str(work), 'cwd': '.', 'cwd-parent': str(work), 'empty': ''}[where]
    with pytest.raises(ExportError):
        check_export_target(target, force=True, protected=[str(ckpt)])


def test_earlier_export_replaced_only_with_force_and_only_its_files(ip_detector, tmp_path):
    """Without force an earlier export is kept; with force its files are replaced and the
    folder has the usual permissions (not the 0700 of a temporary folder)."""
    cfg, model = ip_detector
    out = tmp_path / 'deploy'
    export_deploy(model, cfg, str(out))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o777 & ~umask
    first = (out / 'deploy.pth').stat().st_mtime_ns
    with pytest.raises(ExportError, match='--force'):
        export_deploy(model, cfg, str(out))
    assert (out / 'deploy.pth').stat().st_mtime_ns == first
    export_deploy(model, cfg, str(out), force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*DEPLOY_FILES, DEPLOY_MARKER])
    assert not any(p.name.startswith('.deploy-') for p in tmp_path.iterdir())


def test_unwritable_target_is_a_clear_error(ip_detector, tmp_path):
    """A target below a regular file cannot be created: one clear error, nothing written."""
    cfg, model = ip_detector
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    with pytest.raises(ExportError, match='Cannot (create|write)'):
        export_deploy(model, cfg, str(blocker / 'deploy'))
    assert blocker.read_text() == 'x'
