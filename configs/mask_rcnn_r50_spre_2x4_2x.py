# Mask R-CNN R-50-FPN SpRe 2:4, 2x schedule (24 epochs, lr steps at 16 and 22, as mmdet's 2x).
_base_ = './mask_rcnn_r50_spre_2x4.py'

max_epochs = 24
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[16, 22],
         gamma=0.1)
]
