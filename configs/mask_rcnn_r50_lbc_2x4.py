# Mask R-CNN R-50-FPN, 1x, LBC 2:4: learnable scores over the C(4,2)=6 candidate subsets of
# every group, pruned gradually (cubic) during the first third of the run (4 of the 12 epochs),
# exactly 2:4 from then on. The span is a fraction of the run, resolved from its length when
# training starts, so it holds for any batch size or schedule; absolute iterations (t_i=...,
# t_f=...) work too, and a t_f after the end of the run is refused before training starts.
_base_ = './mask_rcnn_r50_spre_2x4.py'

model = dict(
    backbone=dict(
        sparsity=dict(learner=dict(_delete_=True, type='LBCMask', span=(0, 1 / 3)), spre=None)))
# scores are learned but never weight-decayed (decay would push every subset towards removal)
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.sparsity.scores': dict(decay_mult=0.0)}))
