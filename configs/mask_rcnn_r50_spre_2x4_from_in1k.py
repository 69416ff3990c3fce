# Stage 2 of the published pipeline (paper protocol): Mask R-CNN R-50-FPN 1x on COCO fine-tuned
# from the spre 2:4 ImageNet checkpoint of stage 1 (configs/imagenet/resnet50_spre_2x4_in1k.py),
# loaded with its masks, S, extra branches, both BNs and LBC state (a mismatch is an error naming
# the keys). As in mmdet, BN is frozen (norm_eval=True); the method keeps training the masks.
#   python tools/train.py configs/mask_rcnn_r50_spre_2x4_from_in1k.py \
#       --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/resnet50_spre_2x4_in1k/epoch_120.pth
# An imported reference checkpoint (tools/import_reference.py) works the same way.
_base_ = './mask_rcnn_r50_spre_2x4.py'
model = dict(
    backbone=dict(
        init_cfg=dict(
            _delete_=True,
            type='SparsePretrained',
            checkpoint='work_dirs/resnet50_spre_2x4_in1k/epoch_120.pth',
            prefix='backbone.')))
