# SpRe 2:4 ResNet-50 on ImageNet-1k (recipe: resnet50_srste_2x4_in1k.py): SR-STE main branch plus
# the spatial re-parameterization branch on every 3x3 conv, both BNs in training mode. From
# scratch the branch starts on (rep_gamma=1), except where zero_init_residual starts the main
# branch off too. After training it folds into a plain 2:4 ResNet-50 (<work_dir>/deploy).
_base_ = './resnet50_srste_2x4_in1k.py'
model = dict(backbone=dict(sparsity=dict(spre=dict(rep_gamma=1.0, spatial_interval=1))))
