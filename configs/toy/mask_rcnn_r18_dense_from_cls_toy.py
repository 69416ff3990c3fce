# Dense Mask R-CNN R-18 on the synthetic COCO set fine-tuned from the dense stage-1 checkpoint
# (configs/toy/cls/resnet18_dense_toy_cls64.py), BN frozen as in the sparse pipeline configs: the
# dense reference of the detection comparison.
_base_ = '../mask_rcnn_r18_dense_toy.py'
model = dict(
    backbone=dict(
        norm_eval=True,
        init_cfg=dict(
            _delete_=True,
            type='Pretrained',
            checkpoint='work_dirs/resnet18_dense_toy_cls64/epoch_6.pth',
            prefix='backbone.')))
