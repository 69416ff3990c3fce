# Mask R-CNN R-50-FPN, 1x, SpRe 2:4 backbone plus 2:4 (SR-STE) FPN convs, RoI shared FCs and
# mask-head convs (dense by default, N:M by option: docs/configs.md, where N:M applies). The RoI
# FCs and FPN 3x3s are among the shapes where sparse tensor cores pay off. The RPN head's conv and
# the final classifier/regressor layers stay dense. Deploy: stock FPN / Shared2FCBBoxHead /
# FCNMaskHead.
_base_ = './mask_rcnn_r50_spre_2x4.py'

nm_conv = dict(type='NMConv2d', n=2, m=4, learner=dict(type='SRSTEMask', decay=2e-4))
model = dict(
    neck=dict(conv_cfg=nm_conv),
    roi_head=dict(
        bbox_head=dict(
            type='NMShared2FCBBoxHead',
            sparsity=dict(n=2, m=4, learner=dict(type='SRSTEMask', decay=2e-4))),
        mask_head=dict(conv_cfg=nm_conv)))
