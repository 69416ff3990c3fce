# ResNet-10 (one BasicBlock per stage, widths 16/32/64/128, 3x3 stem for small images) on the
# synthetic classification set, trained from scratch on CPU: the network of the method sweep
# (spre_mmdet.sweep). Dense here (sparsity.stages all False); the method configs make it sparse.
# Every method gets the same recipe: SGD (as the references), cosine, masks every iteration.
_base_ = [
    'mmpretrain::_base_/default_runtime.py',
    './datasets/toy_cls.py',
]
custom_imports = dict(imports=['spre_mmdet.classification'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='NMResNet_CIFAR',
        depth=10,
        stem_channels=16,
        base_channels=16,  # widths 16/32/64/128: multiples of M=16, so 1:16 fits every layer
        num_stages=4,
        out_indices=(3, ),
        norm_eval=False,  # from scratch: BN in training mode
        # a block starting as the identity slows this small network down a lot (measured: 15%
        # vs 36% accuracy after 3 epochs); off, there is also no zero-init asymmetry between
        # SpRe's branch and the main branch
        zero_init_residual=False,
        sparsity=dict(stages=(False, False, False, False))),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=128,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1),
        topk=(1, 5)))

max_epochs = 3
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True),
    # LBC's subset scores are learned without weight decay (decay would push every subset
    # towards removal); a no-op for the other methods
    paramwise_cfg=dict(custom_keys={'.sparsity.scores': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, T_max=max_epochs - 1,
         eta_min=0.0, convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=32)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
custom_hooks = [dict(type='EpochSeedHook')]
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
