# LBC 2:4 ResNet-10 on the synthetic classification set: subsets removed during the first half
# of the run, exactly 2:4 for the second half.
_base_ = './resnet10_srste_2x4_toy_cls.py'
model = dict(backbone=dict(sparsity=dict(learner=dict(_delete_=True, type='LBCMask', span=(0, 0.5)))))
