# SpRe + LBC 2:4 Mask R-CNN R-18 on the toy set (schedule as mask_rcnn_r18_lbc_2x4_toy.py).
_base_ = './mask_rcnn_r18_spre_2x4_toy.py'

model = dict(
    backbone=dict(sparsity=dict(learner=dict(_delete_=True, type='LBCMask', span=(1 / 6, 1 / 2)))))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.sparsity.scores': dict(decay_mult=0.0)}))
