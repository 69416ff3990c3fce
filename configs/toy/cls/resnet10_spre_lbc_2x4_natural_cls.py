# SpRe with an LBC main branch, 2:4, ResNet-10 on the natural-image set.
_base_ = './resnet10_lbc_2x4_natural_cls.py'
model = dict(backbone=dict(sparsity=dict(spre=dict(rep_gamma=1.0, spatial_interval=1))))
