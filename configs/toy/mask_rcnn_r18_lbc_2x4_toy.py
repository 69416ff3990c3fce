# LBC 2:4 Mask R-CNN R-18 on the toy set: subsets removed from 1/6 to 1/2 of the run (iterations
# 100-300 of the 600), exactly 2:4 for the second half of training. The span is a fraction of
# the run, so it fits any --cfg-options train_cfg.max_epochs=... as well.
_base_ = './mask_rcnn_r18_spre_2x4_toy.py'

model = dict(
    backbone=dict(
        sparsity=dict(learner=dict(_delete_=True, type='LBCMask', span=(1 / 6, 1 / 2)), spre=None)))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.sparsity.scores': dict(decay_mult=0.0)}))
