# What every sparse config adds to an mmdet config: this package's modules, the hook that drives
# the masks (and writes the per-layer report), re-parameterization to a plain N:M detector in
# <work_dir>/deploy after training, and per-epoch reseeding so that --resume continues exactly
# like an uninterrupted run (EpochSeedHook; data-loader workers may be persistent, as mmdet's).
custom_imports = dict(imports=['spre_mmdet'], allow_failed_imports=False)
custom_hooks = [
    dict(type='EpochSeedHook'),
    dict(type='SparsityHook', log_interval=50),
    dict(type='ReparameterizeHook', out_dir='deploy'),
]
