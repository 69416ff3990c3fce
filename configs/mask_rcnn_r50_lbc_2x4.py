# Mask R-CNN R-50-FPN, 1x, LBC 2:4: learnable scores over the C(4,2)=6 candidate subsets of
# every group, pruned gradually (cubic) between t_i and t_f, exactly 2:4 from t_f on.
# t_i/t_f are iterations: COCO at batch 16 is ~7330 iterations per epoch, so t_f=29320 ends
# the schedule after 4 of the 12 epochs (scale both with your batch size).
_base_ = './mask_rcnn_r50_spre_2x4.py'

model = dict(
    backbone=dict(
        sparsity=dict(learner=dict(_delete_=True, type='lbc', t_i=0, t_f=29320), spre=None)))
# scores are learned but never weight-decayed (decay would push every subset towards removal)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.sparsity.scores': dict(decay_mult=0.0)}))
# scores stop receiving gradients at t_f (frozen): DDP must tolerate unused parameters
find_unused_parameters = True
