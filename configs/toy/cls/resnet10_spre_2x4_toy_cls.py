# SpRe 2:4 ResNet-10 on the synthetic classification set: SR-STE main branch + the spatial
# re-parameterization branch on every 3x3 conv, both BNs in training mode (from scratch, as in
# the ImageNet recipe). The branch starts on (rep_gamma=1) except where zero_init_residual
# starts the main branch off too.
_base_ = './resnet10_srste_2x4_toy_cls.py'
model = dict(backbone=dict(sparsity=dict(spre=dict(rep_gamma=1.0, spatial_interval=1))))
