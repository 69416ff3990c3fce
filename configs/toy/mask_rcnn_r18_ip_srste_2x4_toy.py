# Interspace pruning + SR-STE 2:4 Mask R-CNN R-18 on the toy set (N:M on the coefficients).
_base_ = './mask_rcnn_r18_spre_2x4_toy.py'

model = dict(backbone=dict(sparsity=dict(spre=None, interspace=dict(pruning='nm'))))
