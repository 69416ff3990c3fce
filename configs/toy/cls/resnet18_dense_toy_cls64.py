# Dense ResNet-18 stage 1 of the two-stage pipeline on CPU (see resnet18_spre_2x4_toy_cls64.py):
# the dense reference of the detection comparison.
_base_ = './resnet18_spre_2x4_toy_cls64.py'
model = dict(backbone=dict(sparsity=dict(_delete_=True, stages=(False, False, False, False))))
custom_hooks = [dict(type='EpochSeedHook')]
