# Faster R-CNN R-50-FPN, 1x, Interspace pruning + SR-STE 2:4: every 3x3 conv becomes a filter
# basis (9 filters, pixel-basis init) times coefficients that are 2:4 along input channels; the
# 1x1/downsample convs are plain SR-STE 2:4. The deploy checkpoint writes each 3x3 as basis conv +
# 2:4 1x1 (config imports spre_mmdet); ReparameterizeHook(interspace_form='merged') or
# tools/reparameterize.py --interspace-form merged gives dense 3x3s in a stock ResNet instead
# (docs/methods/interspace.md).
_base_ = './faster_rcnn_r50_spre_2x4.py'

model = dict(backbone=dict(sparsity=dict(spre=None, interspace=dict(pruning='nm'))))
