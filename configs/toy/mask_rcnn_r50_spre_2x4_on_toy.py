# The user's main COCO config, configs/mask_rcnn_r50_spre_2x4.py, pointed at the synthetic toy
# set: the documented overrides for trying it without COCO or pretrained weights (slow on CPU:
# R-50 at batch 2; the R-18 toy configs are the ones tuned for CPU).
#   python tools/make_toy_coco.py --out data/toy_coco
#   python tools/train.py configs/toy/mask_rcnn_r50_spre_2x4_on_toy.py
_base_ = '../mask_rcnn_r50_spre_2x4.py'

data_root = 'data/toy_coco/'
synthetic_data = 'python tools/make_toy_coco.py --out data/toy_coco'
classes = ('circle', 'square', 'triangle', 'ellipse', 'star', 'cross')
model = dict(
    # no ImageNet weights here: train from scratch, so BN must learn its statistics
    backbone=dict(init_cfg=None, frozen_stages=-1, norm_eval=False,
                  sparsity=dict(spre=dict(rep_gamma=1.0))),
    roi_head=dict(bbox_head=dict(num_classes=len(classes)),
                  mask_head=dict(num_classes=len(classes))))
# 128x128 images: keep them at their size (the COCO pipeline would upscale them to 1333x800)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
_dataset = dict(data_root=data_root, metainfo=dict(classes=classes))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(**_dataset, ann_file='annotations/instances_train.json',
                                     data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(**_dataset, ann_file='annotations/instances_val.json',
                                   data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
# mmdet's lr 0.02 assumes batch 16 and diverged at batch 2 from scratch: AdamW as the toy configs
optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                     optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
                     clip_grad=dict(max_norm=10, norm_type=2))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
