# SpRe with an LBC main branch, 2:4 ResNet-50 on ImageNet-1k (recipe: resnet50_srste_2x4_in1k.py).
_base_ = './resnet50_lbc_2x4_in1k.py'
model = dict(backbone=dict(sparsity=dict(spre=dict(rep_gamma=1.0, spatial_interval=1))))
