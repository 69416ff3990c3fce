# Dense ResNet-10 on the synthetic classification set: the reference every sparse method of the
# sweep is compared with (same recipe, configs/_base_/toy_cls_resnet10.py).
#   python tools/make_toy_cls.py --out data/toy_cls
#   python tools/train.py configs/toy/cls/resnet10_dense_toy_cls.py
_base_ = '../../_base_/toy_cls_resnet10.py'
