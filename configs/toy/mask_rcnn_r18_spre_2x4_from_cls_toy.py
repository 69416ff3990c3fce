# Stage 2 of the two-stage pipeline on CPU: SpRe 2:4 Mask R-CNN R-18 on the synthetic COCO set,
# fine-tuned from the stage-1 checkpoint (configs/toy/cls/resnet18_spre_2x4_toy_cls64.py) with its
# masks, S, extra branches and both BNs. Paper protocol, as on COCO: BN frozen (norm_eval=True),
# the method keeps training the masks; the deploy model is a stock 2:4 Mask R-CNN R-18.
#   python tools/train.py configs/toy/mask_rcnn_r18_spre_2x4_from_cls_toy.py
_base_ = './mask_rcnn_r18_spre_2x4_toy.py'
model = dict(
    backbone=dict(
        norm_eval=True,
        sparsity=dict(learner=dict(interval=1), spre=dict(spatial_interval=1)),
        init_cfg=dict(
            _delete_=True,
            type='SparsePretrained',
            checkpoint='work_dirs/resnet18_spre_2x4_toy_cls64/epoch_6.pth',
            prefix='backbone.')))
