# Unstructured magnitude pruning at the density of 2:4 (50%), per layer, recomputed every
# iteration with the SR-STE backward: the reference N:M methods are measured against (the same
# density without the N:M constraint; SpRe aims to recover what the constraint costs). NOT
# hardware-valid N:M, so no deploy export; the report says "not 2:4" for its layers.
_base_ = './resnet10_srste_2x4_toy_cls.py'
model = dict(backbone=dict(sparsity=dict(
    learner=dict(_delete_=True, type='UnstructuredMask', interval=1, decay=2e-4))))
custom_hooks = [
    dict(type='EpochSeedHook'),
    dict(type='SparsityHook', log_interval=20),
]
