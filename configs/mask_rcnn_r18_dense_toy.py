# Dense (no sparsity) Mask R-CNN R-18 baseline on the synthetic toy COCO dataset.
#   python tools/make_toy_coco.py --out data/toy_coco
#   python tools/train.py configs/mask_rcnn_r18_dense_toy.py
_base_ = [
    '_base_/toy_mask_rcnn_r18.py',
    '_base_/datasets/toy_coco_instance.py',
]
custom_imports = dict(imports=['spre_mmdet'], allow_failed_imports=False)
# per-epoch reseeding: --resume continues exactly like an uninterrupted run
custom_hooks = [dict(type='EpochSeedHook')]
