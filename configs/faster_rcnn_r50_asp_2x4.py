# Faster R-CNN R-50-FPN, 1x, ASP 2:4 baseline: one-shot magnitude mask of the pretrained
# weights, fixed during fine-tuning (pruned weights stay zero).
_base_ = './faster_rcnn_r50_spre_2x4.py'

model = dict(backbone=dict(sparsity=dict(learner=dict(_delete_=True, type='FixedMask'), spre=None)))
