# SR-STE 2:4 ResNet-18 stage 1 of the two-stage pipeline on CPU (see resnet18_spre_2x4_toy_cls64.py).
_base_ = './resnet18_spre_2x4_toy_cls64.py'
model = dict(backbone=dict(sparsity=dict(spre=None)))
