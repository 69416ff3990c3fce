# Faster R-CNN R-50-FPN, 1x, SpRe 2:4. Defaults explained in mask_rcnn_r50_spre_2x4.py.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', '_base_/sparse_runtime.py']

model = dict(
    backbone=dict(
        type='SparseResNet',
        frozen_stages=0,
        norm_eval=True,
        sparsity=dict(
            n=2, m=4,
            learner=dict(type='SRSTEMask', decay=2e-4, interval=1),
            spre=dict(rep_gamma=0.0, spatial_interval=1))))
