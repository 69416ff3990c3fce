# SpRe 2:4 Mask R-CNN R-18 on the synthetic COCO set started from DENSE weights (a dense stage-1
# checkpoint, configs/toy/cls/resnet18_dense_toy_cls64.py): the toy counterpart of the COCO
# configs' default start (configs/mask_rcnn_r50_spre_2x4.py from torchvision's dense ResNet-50),
# with the same detection settings: BN frozen (norm_eval=True), sparse stages trained
# (frozen_stages=0). Used to measure what SpRe's branch does in that setting (docs/methods/spre.md).
_base_ = './mask_rcnn_r18_spre_2x4_toy.py'
model = dict(
    backbone=dict(
        norm_eval=True,
        sparsity=dict(
            learner=dict(interval=1),
            spre=dict(rep_gamma=0.0, spatial_interval=1)),
        init_cfg=dict(
            _delete_=True,
            type='Pretrained',
            checkpoint='work_dirs/resnet18_dense_toy_cls64/epoch_6.pth',
            prefix='backbone.')))
