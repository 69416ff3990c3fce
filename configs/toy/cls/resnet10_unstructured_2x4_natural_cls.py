# Unstructured magnitude pruning at the density of 2:4 on the natural-image set (as
# resnet10_unstructured_2x4_toy_cls.py: the reference without the N:M constraint).
_base_ = './resnet10_srste_2x4_natural_cls.py'
model = dict(backbone=dict(sparsity=dict(
    learner=dict(_delete_=True, type='UnstructuredMask', interval=1, decay=2e-4))))
custom_hooks = [
    dict(type='EpochSeedHook'),
    dict(type='SparsityHook', log_interval=20),
]
