# SpRe 2:4 Mask R-CNN R-18 on the synthetic toy COCO set, from scratch on CPU: the README's
# main job. Same model/schedule as ../mask_rcnn_r18_dense_toy.py, backbone made sparse.
#   python tools/make_toy_coco.py --out data/toy_coco
#   python tools/train.py configs/toy/mask_rcnn_r18_spre_2x4_toy.py
_base_ = [
    '../_base_/toy_mask_rcnn_r18.py',
    '../_base_/datasets/toy_coco_instance.py',
    '../_base_/sparse_runtime.py',
]

model = dict(
    backbone=dict(
        type='SparseResNet',
        sparsity=dict(
            n=2, m=4,
            # masks and S every iteration, as in the COCO configs and the references
            learner=dict(type='SRSTEMask', decay=2e-4, interval=1),
            # from scratch: the branch is on from the start (rep_gamma=1, kaiming W_rep)
            spre=dict(rep_gamma=1.0, spatial_interval=1))))
custom_hooks = [
    dict(type='EpochSeedHook'),
    dict(type='SparsityHook', log_interval=10),
    dict(type='ReparameterizeHook', out_dir='deploy'),
]
