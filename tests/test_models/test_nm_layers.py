"""N:M neck and heads by config: NMConv2d (conv_cfg) and NMShared2FCBBoxHead."""
from pathlib import Path

import torch
from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from spre_mmdet.deploy import deploy_config
from spre_mmdet.sparsity import (SparseConv2d, SparseLinear, check_nm_tensor, refresh_masks,
                                 reparameterize, sparse_layers)

REPO = Path(__file__).resolve().parents[2]


def toy_config_with_sparse_heads():
    register_all_modules()
    cfg = Config.fromfile(str(REPO / 'configs/toy/mask_rcnn_r18_srste_2x4_toy.py'))
    nm_conv = dict(type='NMConv2d', n=2, m=4)
    cfg.merge_from_dict({'model.neck.conv_cfg': nm_conv,
                         'model.roi_head.mask_head.conv_cfg': nm_conv,
                         'model.roi_head.bbox_head.type': 'NMShared2FCBBoxHead',
                         'model.roi_head.bbox_head.sparsity': dict(n=2, m=4)})
    return cfg


def test_neck_and_heads_become_sparse_and_deploy_to_stock_modules():
    """FPN convs, RoI shared FCs and mask-head convs are 2:4; the deploy config uses stock
    types, loads the re-parameterized weights strictly and gives the same features and RoI
    head outputs."""
    cfg = toy_config_with_sparse_heads()
    model = MODELS.build(cfg.model)
    model.init_weights()
    names = {name for name, _ in sparse_layers(model)}
    assert {'neck.fpn_convs.0.conv', 'roi_head.bbox_head.shared_fcs.1',
            'roi_head.mask_head.convs.0.conv'} <= names
    assert isinstance(model.roi_head.bbox_head.shared_fcs[0], SparseLinear)
    assert isinstance(model.neck.lateral_convs[1].conv, SparseConv2d)
    refresh_masks(model, 0)
    model.eval()

    stock_cfg = deploy_config(cfg)
    assert stock_cfg.model.roi_head.bbox_head.type == 'Shared2FCBBoxHead'
    assert stock_cfg.model.neck.conv_cfg is None and 'custom_imports' not in stock_cfg
    stock = MODELS.build(stock_cfg.model).eval()
    stock.load_state_dict(reparameterize(model).state_dict(), strict=True)
    for name in names:
        weight = dict(stock.named_modules())[name].weight
        assert check_nm_tensor(weight, 2, 4).ok, name

    x = torch.randn(1, 3, 128, 128)
    rois = torch.tensor([[0, 10.0, 10.0, 90.0, 80.0], [0, 30.0, 5.0, 60.0, 120.0]])
    with torch.no_grad():
        feats, stock_feats = model.extract_feat(x), stock.extract_feat(x)
        for a, b in zip(feats, stock_feats):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
        ours = model.roi_head._bbox_forward(feats, rois)
        theirs = stock.roi_head._bbox_forward(stock_feats, rois)
    torch.testing.assert_close(theirs['cls_score'], ours['cls_score'], rtol=1e-4, atol=1e-4)
