# Stage 1 of the two-stage pipeline on CPU: SpRe 2:4 ResNet-18 (ImageNet stem, so its checkpoint
# fits the detection backbone key for key) on the synthetic classification set at 64x64, from
# scratch with the ImageNet recipe's shape (SGD, cosine, BN in training mode, masks every
# iteration). Stage 2: configs/toy/mask_rcnn_r18_spre_2x4_from_cls_toy.py.
#   python tools/make_toy_cls.py --out data/toy_cls64 --size 64 --num-train 8000 --num-val 1000
#   python tools/train.py configs/toy/cls/resnet18_spre_2x4_toy_cls64.py
_base_ = '../../_base_/toy_cls_resnet10.py'
data_root = 'data/toy_cls64/'
synthetic_data = ('python tools/make_toy_cls.py --out data/toy_cls64 --size 64 --num-train 8000 '
                  '--num-val 1000')
train_dataloader = dict(batch_size=32, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=64, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

model = dict(
    backbone=dict(
        _delete_=True,
        type='NMResNet',
        depth=18,
        norm_eval=False,
        zero_init_residual=False,  # as the ResNet-10 recipe: learns much faster from scratch
        sparsity=dict(
            n=2, m=4,
            learner=dict(type='SRSTEMask', decay=2e-4, interval=1),
            spre=dict(rep_gamma=1.0, spatial_interval=1))),
    head=dict(in_channels=512))
optim_wrapper = dict(optimizer=dict(lr=0.05))  # batch 32
max_epochs = 6
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, T_max=max_epochs - 1,
         eta_min=0.0, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
custom_hooks = [
    dict(type='EpochSeedHook'),
    dict(type='SparsityHook', log_interval=20),
    dict(type='ReparameterizeHook', out_dir='deploy'),
]
