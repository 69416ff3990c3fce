# SR-STE 2:4 Mask R-CNN R-18 on the synthetic COCO set started from DENSE weights: the baseline
# of configs/toy/mask_rcnn_r18_spre_2x4_from_dense_toy.py (same dense checkpoint, BN frozen,
# masks every iteration), so the two differ only in SpRe's extra branch.
_base_ = './mask_rcnn_r18_srste_2x4_toy.py'
model = dict(
    backbone=dict(
        norm_eval=True,
        sparsity=dict(learner=dict(interval=1)),
        init_cfg=dict(
            _delete_=True,
            type='Pretrained',
            checkpoint='work_dirs/resnet18_dense_toy_cls64/epoch_6.pth',
            prefix='backbone.')))
