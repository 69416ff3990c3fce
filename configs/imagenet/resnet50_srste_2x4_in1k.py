# Stage 1 of the published pipeline: SR-STE 2:4 ResNet-50 on ImageNet-1k with mmpretrain 1.2.
# The reference recipe of the N:M papers: SGD momentum 0.9, lr 0.1 per 256 images (8 GPUs x 32),
# 5 linear warm-up epochs then cosine, 120 epochs, weight decay 1e-4, label smoothing 0.1, BN in
# training mode, masks every iteration.
#   bash tools/dist_train.sh configs/imagenet/resnet50_srste_2x4_in1k.py 8
#   python tools/test.py configs/imagenet/resnet50_srste_2x4_in1k.py work_dirs/.../epoch_120.pth
# <work_dir>/deploy then holds a stock mmpretrain ResNet-50 classifier with exactly 2:4 weights;
# the checkpoint itself starts the COCO stage (configs/mask_rcnn_r50_srste_2x4_from_in1k.py).
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
custom_imports = dict(imports=['spre_mmdet.classification'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='NMResNet',
        norm_eval=False,
        sparsity=dict(n=2, m=4, learner=dict(type='SRSTEMask', decay=2e-4, interval=1))),
    head=dict(loss=dict(_delete_=True, type='LabelSmoothLoss', label_smooth_val=0.1)))

max_epochs = 120
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
optim_wrapper = dict(optimizer=dict(lr=0.1, momentum=0.9, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=5, end=max_epochs,
         T_max=max_epochs - 5, eta_min=0.0, convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=256)
custom_hooks = [
    dict(type='EpochSeedHook'),
    dict(type='SparsityHook', log_interval=100),
    dict(type='ReparameterizeHook', out_dir='deploy'),
]
