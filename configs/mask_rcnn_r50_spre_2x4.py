# Mask R-CNN R-50-FPN, 1x, SpRe 2:4 (SR-STE main branch + spatial re-parameterization branch on
# every 3x3 conv), fine-tuned from ImageNet weights on COCO. After training, <work_dir>/deploy
# holds a plain ResNet Mask R-CNN with exactly 2:4 backbone weights (stock mmdet loads it).
#   python tools/train.py configs/mask_rcnn_r50_spre_2x4.py
# Other N:M: --cfg-options model.backbone.sparsity.n=1 model.backbone.sparsity.m=4  (or 2:8, 4:8)
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', '_base_/sparse_runtime.py']

model = dict(
    backbone=dict(
        type='SparseResNet',
        # Detection defaults, and why:
        # * frozen_stages=0 (mmdet: 1): only the dense stem stays frozen. A frozen sparse stage
        #   never updates, so its mask would be a one-shot magnitude mask it cannot recover
        #   from, and a SpRe branch there could not learn (SparseResNet then skips it and logs).
        # * norm_eval=True (as mmdet): 2 images per GPU give poor BN batch statistics. BN_rep
        #   then keeps its running stats (0, 1) and acts as a learnable per-channel scale+shift.
        # * rep_gamma=0: the extra branch starts switched off, so training starts exactly from
        #   the pretrained dense function under the 2:4 mask. This dense start is an ADAPTATION:
        #   measured, the branch then stays nearly off (train/spre/branch_ratio ~0.006), i.e.
        #   this trains SR-STE. The paper's protocol is the two-stage pipeline
        #   (mask_rcnn_r50_spre_2x4_from_in1k.py); spre.rep_gamma=1.0 keeps the branch on
        #   (docs/methods/spre.md, "Starting from dense weights").
        # * init_cfg (inherited): torchvision://resnet50 needs torchvision; without it, point
        #   init_cfg.checkpoint at a local copy of the weights. A dense checkpoint loads into
        #   the same keys; masks and S are derived from the loaded weights. An ImageNet SpRe or
        #   SR-STE checkpoint of this package loads as well, with its masks, S and branches.
        frozen_stages=0,
        norm_eval=True,
        sparsity=dict(
            n=2, m=4,
            learner=dict(type='SRSTEMask', decay=2e-4, interval=1),
            spre=dict(rep_gamma=0.0, spatial_interval=1))))
