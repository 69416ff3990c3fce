# Dense ResNet-10 on the natural-image set (regions of scikit-image's photographs).
#   python tools/make_natural_cls.py --out data/natural_cls
#   python tools/train.py configs/toy/cls/resnet10_dense_natural_cls.py
_base_ = '../../_base_/natural_cls_resnet10.py'
