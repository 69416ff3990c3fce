"""The cells of the sweep: which shipped config each method runs, and its options."""
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

CLS = 'configs/toy/cls'

#: classification: method -> its 2:4 config (the pattern and seed are options of a cell)
METHODS: Dict[str, str] = {
    'dense': f'{CLS}/resnet10_dense_toy_cls.py',
    'unstructured': f'{CLS}/resnet10_unstructured_2x4_toy_cls.py',
    'srste': f'{CLS}/resnet10_srste_2x4_toy_cls.py',
    'spre': f'{CLS}/resnet10_spre_2x4_toy_cls.py',
    'lbc': f'{CLS}/resnet10_lbc_2x4_toy_cls.py',
    'spre_lbc': f'{CLS}/resnet10_spre_lbc_2x4_toy_cls.py',
}

#: the same methods on the natural-image set (docs/natural_cls.md): method -> its 2:4 config
NATURAL_METHODS: Dict[str, str] = {
    method: config.replace('_toy_cls.py', '_natural_cls.py') for method, config in METHODS.items()}

#: detection through the two-stage pipeline: method -> (stage-1 classification config,
#: stage-2 Mask R-CNN config that starts from the stage-1 checkpoint)
DETECTION_METHODS: Dict[str, Tuple[str, str]] = {
    'dense': (f'{CLS}/resnet18_dense_toy_cls64.py',
              'configs/toy/mask_rcnn_r18_dense_from_cls_toy.py'),
    'srste': (f'{CLS}/resnet18_srste_2x4_toy_cls64.py',
              'configs/toy/mask_rcnn_r18_srste_2x4_from_cls_toy.py'),
    'spre': (f'{CLS}/resnet18_spre_2x4_toy_cls64.py',
             'configs/toy/mask_rcnn_r18_spre_2x4_from_cls_toy.py'),
}

#: detection from scratch on the synthetic COCO set, one shipped toy config per method (what
#: ``make demo`` trains for SpRe): method -> config
TOY_METHODS: Dict[str, str] = {
    'dense': 'configs/mask_rcnn_r18_dense_toy.py',
    'asp': 'configs/toy/mask_rcnn_r18_asp_2x4_toy.py',
    'srste': 'configs/toy/mask_rcnn_r18_srste_2x4_toy.py',
    'lbc': 'configs/toy/mask_rcnn_r18_lbc_2x4_toy.py',
    'spre': 'configs/toy/mask_rcnn_r18_spre_2x4_toy.py',
    'spre_lbc': 'configs/toy/mask_rcnn_r18_spre_lbc_2x4_toy.py',
    'ip_srste': 'configs/toy/mask_rcnn_r18_ip_srste_2x4_toy.py',
}

DEFAULT_PATTERNS = ((2, 4), (1, 4), (1, 8), (1, 16))

#: the natural-image set labelled by source photo (``make_natural_cls.py --labels photo --out
#: data/natural_photo_cls``: 14 classes): the natural configs with this folder and class count
PHOTO_DATA = 'data/natural_photo_cls/'
PHOTO_CLASSES = 14

#: options a task adds to its configs (data folder, classes)
TASK_OPTIONS: Dict[str, List[str]] = {
    'photo': [*(f'{loader}.dataset.data_root={PHOTO_DATA}'
                for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')),
              f'model.head.num_classes={PHOTO_CLASSES}',
              f'data_preprocessor.num_classes={PHOTO_CLASSES}'],
}


#: detection on natural backgrounds (task ``'det_photo'``): stage 1 pretrains on the natural-
#: image set labelled by photo, in colour at 64 pixels (``make_natural_cls.py --out
#: data/natural_photo_cls64 --labels photo --colour --size 64 --cell 192 --val-size 64
#: --max-zoom 1 --num-train 600 --num-val 80``: 13 classes, the text photo has no 192-pixel
#: region), stage 2 fine-tunes on the toy COCO shapes drawn on the photos
#: (``make_toy_coco.py --out data/toy_coco_photos --backgrounds photos``)
PHOTO64_DATA = 'data/natural_photo_cls64/'
PHOTO64_CLASSES = 13
COCO_PHOTOS_DATA = 'data/toy_coco_photos/'

#: the folders of a two-stage cell's runs, inside the cell's folder
STAGE_DIRS = ('stage1_cls', 'stage2_det')

#: detection task (the two-stage ones) -> (options of stage 1, options of stage 2)
STAGE_OPTIONS: Dict[str, Tuple[List[str], List[str]]] = {
    'det': ([], []),
    'det_photo': (
        [*(f'{loader}.dataset.data_root={PHOTO64_DATA}'
           for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')),
         f'model.head.num_classes={PHOTO64_CLASSES}',
         f'data_preprocessor.num_classes={PHOTO64_CLASSES}'],
        [*(f'{loader}.dataset.data_root={COCO_PHOTOS_DATA}'
           for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')),
         *(f'{evaluator}.ann_file={COCO_PHOTOS_DATA}annotations/instances_val.json'
           for evaluator in ('val_evaluator', 'test_evaluator'))]),
}
DETECTION_TASKS = tuple(STAGE_OPTIONS)


@dataclass(frozen=True)
class Cell:
    """One run of the grid. ``n``/``m`` are ``None`` for dense (which has no pattern)."""

    task: str
    method: str
    n: Optional[int]
    m: Optional[int]
    seed: int

    @property
    def pattern(self) -> str:
        return 'dense' if self.n is None else f'{self.n}:{self.m}'

    @property
    def name(self) -> str:
        pattern = 'dense' if self.n is None else f'{self.n}x{self.m}'
        return f'{self.task}_{self.method}_{pattern}_s{self.seed}'

    def sparsity_options(self) -> List[str]:
        if self.n is None:
            return []
        return [f'model.backbone.sparsity.n={self.n}', f'model.backbone.sparsity.m={self.m}']

    def task_options(self) -> List[str]:
        return list(TASK_OPTIONS.get(self.task, []))

    def stage_options(self, stage: int) -> List[str]:
        """A detection cell's options of stage 1 (pretraining) or 2 (detection)."""
        return list(STAGE_OPTIONS[self.task][stage - 1])

    def asdict(self) -> dict:
        return dict(asdict(self), pattern=self.pattern, name=self.name)


def _cells(task: str, methods: Sequence[str], patterns: Sequence[Tuple[int, int]],
           seeds: Sequence[int]) -> List[Cell]:
    cells = []
    for seed in seeds:  # seed-major: an interrupted sweep has whole seeds of every method
        for method in methods:
            for n, m in ([(None, None)] if method == 'dense' else patterns):
                cells.append(Cell(task, method, n, m, seed))
    return cells


def classification_grid(methods: Sequence[str] = tuple(METHODS),
                        patterns: Sequence[Tuple[int, int]] = DEFAULT_PATTERNS,
                        seeds: Sequence[int] = (0, 1, 2)) -> List[Cell]:
    """Every (method, pattern, seed) cell of the classification sweep; dense once per seed."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f'Unknown methods {unknown}; choose from {sorted(METHODS)}.')
    return _cells('cls', methods, patterns, seeds)


def natural_grid(methods: Sequence[str] = tuple(NATURAL_METHODS),
                 patterns: Sequence[Tuple[int, int]] = DEFAULT_PATTERNS,
                 seeds: Sequence[int] = (0, 1, 2), labels: str = 'region') -> List[Cell]:
    """The classification grid on the natural-image set: task ``'natural'`` (a class per
    photo region) or, with ``labels='photo'``, task ``'photo'`` (a class per photo)."""
    unknown = sorted(set(methods) - set(NATURAL_METHODS))
    if unknown:
        raise ValueError(f'Unknown methods {unknown}; choose from {sorted(NATURAL_METHODS)}.')
    if labels not in ('region', 'photo'):
        raise ValueError(f"labels must be 'region' or 'photo', got {labels!r}")
    return _cells('natural' if labels == 'region' else 'photo', methods, patterns, seeds)


def detection_grid(methods: Sequence[str] = tuple(DETECTION_METHODS),
                   patterns: Sequence[Tuple[int, int]] = ((2, 4), (1, 8)),
                   seeds: Sequence[int] = (0, 1), task: str = 'det') -> List[Cell]:
    """The detection cells (two-stage pipeline): task ``'det'`` on the synthetic sets,
    ``'det_photo'`` on the natural-image ones (:data:`STAGE_OPTIONS`)."""
    unknown = sorted(set(methods) - set(DETECTION_METHODS))
    if unknown:
        raise ValueError(f'Unknown detection methods {unknown}; choose from '
                         f'{sorted(DETECTION_METHODS)}.')
    if task not in DETECTION_TASKS:
        raise ValueError(f'task must be one of {DETECTION_TASKS}, got {task!r}')
    return _cells(task, methods, patterns, seeds)


def toy_grid(methods: Sequence[str] = tuple(TOY_METHODS),
             patterns: Sequence[Tuple[int, int]] = ((2, 4), ),
             seeds: Sequence[int] = (0, )) -> List[Cell]:
    """Detection from scratch on the synthetic COCO set (every method's toy config)."""
    unknown = sorted(set(methods) - set(TOY_METHODS))
    if unknown:
        raise ValueError(f'Unknown toy methods {unknown}; choose from {sorted(TOY_METHODS)}.')
    return _cells('toy', methods, patterns, seeds)


def parse_pattern(text: str) -> Tuple[int, int]:
    """``'1:8'`` -> ``(1, 8)``."""
    try:
        n, m = (int(x) for x in text.split(':'))
    except ValueError:
        raise ValueError(f'A pattern is N:M, e.g. 2:4, got {text!r}.') from None
    return n, m
