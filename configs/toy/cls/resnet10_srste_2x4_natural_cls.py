# SR-STE 2:4 ResNet-10 on the natural-image set (as resnet10_srste_2x4_toy_cls.py).
# Other N:M: --cfg-options model.backbone.sparsity.n=1 model.backbone.sparsity.m=8
_base_ = '../../_base_/natural_cls_resnet10.py'
model = dict(backbone=dict(sparsity=dict(
    _delete_=True, n=2, m=4, learner=dict(type='SRSTEMask', decay=2e-4, interval=1))))
custom_hooks = [
    dict(type='EpochSeedHook'),
    dict(type='SparsityHook', log_interval=20),
    dict(type='ReparameterizeHook', out_dir='deploy'),
]
