# What every sparse config adds to an mmdet config: this package's modules, the hook that drives
# the masks (and writes the per-layer report), and re-parameterization to a plain N:M detector
# in <work_dir>/deploy after training.
custom_imports = dict(imports=['spre_mmdet'], allow_failed_imports=False)
custom_hooks = [
    dict(type='SparsityHook', log_interval=50),
    dict(type='ReparameterizeHook', out_dir='deploy'),
]
