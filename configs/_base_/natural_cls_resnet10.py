# The sweep's ResNet-10 (widths 16-128, 3x3 stem; ./toy_cls_resnet10.py, same recipe and
# loaders) on the natural-image set: grid regions of the photographs scikit-image ships (grey
# levels, 24x24 crops at several scales, train and val crops from disjoint parts of each
# region; docs/natural_cls.md). Generate it first:
#   python tools/make_natural_cls.py --out data/natural_cls     (138 classes, 100 / 20 per class)
# The budget (12 epochs of 432 iterations at batch 32) comes from the dense learning curve
# (docs/results.md, section 2, "Natural images"); every method gets the same.
_base_ = './toy_cls_resnet10.py'
data_root = 'data/natural_cls/'
synthetic_data = 'python tools/make_natural_cls.py --out data/natural_cls'
num_classes = 138
data_preprocessor = dict(num_classes=num_classes)
model = dict(head=dict(num_classes=num_classes))
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

max_epochs = 12
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=max_epochs, T_max=max_epochs - 1,
         eta_min=0.0, convert_to_iter_based=True),
]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=max_epochs,
                                     max_keep_ckpts=1))
