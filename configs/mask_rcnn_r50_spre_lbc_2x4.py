# Mask R-CNN R-50-FPN, 1x, SpRe with an LBC main branch, 2:4. B (the branch mask) is LBC's union
# of alive subsets, exactly 2:4 from 1/3 of the run on. See mask_rcnn_r50_lbc_2x4.py for the span.
_base_ = './mask_rcnn_r50_spre_2x4.py'

model = dict(
    backbone=dict(sparsity=dict(learner=dict(_delete_=True, type='LBCMask', span=(0, 1 / 3)))))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.sparsity.scores': dict(decay_mult=0.0)}))
