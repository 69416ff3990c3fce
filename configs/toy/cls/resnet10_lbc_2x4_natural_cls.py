# LBC 2:4 ResNet-10 on the natural-image set (as resnet10_lbc_2x4_toy_cls.py).
_base_ = './resnet10_srste_2x4_natural_cls.py'
model = dict(backbone=dict(sparsity=dict(learner=dict(_delete_=True, type='LBCMask',
                                                      span=(0, 0.5)))))
