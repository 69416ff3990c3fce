# Mask R-CNN R-50-FPN, 1x, SpRe with an LBC main branch, 2:4. B (the branch mask) is LBC's union
# of alive subsets, exactly 2:4 from t_f on. See mask_rcnn_r50_lbc_2x4.py for t_i/t_f.
_base_ = './mask_rcnn_r50_spre_2x4.py'

model = dict(
    backbone=dict(sparsity=dict(learner=dict(_delete_=True, type='lbc', t_i=0, t_f=29320))))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.sparsity.scores': dict(decay_mult=0.0)}))
find_unused_parameters = True
