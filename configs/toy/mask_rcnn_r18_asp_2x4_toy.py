# ASP 2:4 Mask R-CNN R-18 on the toy set. From scratch the "pretrained" weights are the random
# init, so this is magnitude pruning at init: a lower bound, not the fine-tuning baseline.
_base_ = './mask_rcnn_r18_spre_2x4_toy.py'

model = dict(backbone=dict(sparsity=dict(learner=dict(_delete_=True, type='FixedMask'), spre=None)))
