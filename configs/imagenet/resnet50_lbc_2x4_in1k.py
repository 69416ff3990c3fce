# LBC 2:4 ResNet-50 on ImageNet-1k (recipe: resnet50_srste_2x4_in1k.py): learnable scores over the
# 6 candidate 2-of-4 subsets of every group, removed (cubic) during the first third of the run,
# exactly 2:4 for the remaining 80 epochs.
_base_ = './resnet50_srste_2x4_in1k.py'
model = dict(backbone=dict(sparsity=dict(learner=dict(_delete_=True, type='LBCMask', span=(0, 1 / 3)))))
# scores are learned without weight decay (decay would push every subset towards removal)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.sparsity.scores': dict(decay_mult=0.0)}))
