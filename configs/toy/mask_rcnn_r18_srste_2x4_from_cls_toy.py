# SR-STE 2:4 Mask R-CNN R-18 on the synthetic COCO set, stage 2 of the two-stage pipeline on CPU:
# fine-tuned from configs/toy/cls/resnet18_srste_2x4_toy_cls64.py (see
# mask_rcnn_r18_spre_2x4_from_cls_toy.py).
_base_ = './mask_rcnn_r18_spre_2x4_from_cls_toy.py'
model = dict(
    backbone=dict(
        sparsity=dict(spre=None),
        init_cfg=dict(checkpoint='work_dirs/resnet18_srste_2x4_toy_cls64/epoch_6.pth')))
