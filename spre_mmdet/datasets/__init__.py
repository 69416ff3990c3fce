"""Datasets and dataset generators for spre-mmdet."""
from .synthetic_coco import CLASSES as SYNTHETIC_COCO_CLASSES
from .synthetic_coco import generate_synthetic_coco

__all__ = ['generate_synthetic_coco', 'SYNTHETIC_COCO_CLASSES']
