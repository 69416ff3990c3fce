# Mask R-CNN R-50-FPN, 1x, SR-STE 2:4 (every layer1-4 conv; the stem stays dense).
# Other N:M by override, e.g. --cfg-options model.backbone.sparsity.n=4 model.backbone.sparsity.m=8
_base_ = './mask_rcnn_r50_spre_2x4.py'

model = dict(backbone=dict(sparsity=dict(spre=None)))
