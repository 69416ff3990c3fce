# SpRe 2:4 ResNet-10 on the natural-image set (as resnet10_spre_2x4_toy_cls.py).
_base_ = './resnet10_srste_2x4_natural_cls.py'
model = dict(backbone=dict(sparsity=dict(spre=dict(rep_gamma=1.0, spatial_interval=1))))
