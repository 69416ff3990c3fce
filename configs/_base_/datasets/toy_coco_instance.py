# Synthetic "toy COCO" instance segmentation (shapes on textured backgrounds).
# Generate it first:  python tools/make_toy_coco.py --out data/toy_coco
# (128x128 images, 6 classes; see docs/synthetic_coco.md).
_base_ = 'mmdet::_base_/datasets/coco_instance.py'

dataset_type = 'CocoDataset'
data_root = 'data/toy_coco/'
# what the tools suggest when the set is missing
synthetic_data = 'python tools/make_toy_coco.py --out data/toy_coco'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'ellipse', 'star', 'cross'),
    palette=[(220, 20, 60), (0, 80, 200), (0, 160, 60), (250, 140, 0), (230, 210, 0),
             (150, 0, 200)])
image_scale = (128, 128)  # (w, h); the generator's default size -> Resize is a no-op
backend_args = None

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]

# Tiny images: data loading is negligible next to the model, so no worker processes
# (on a 2-core machine they only compete with the training threads).
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric=['bbox', 'segm'],
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
