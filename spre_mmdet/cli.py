"""What the command-line tools share: one way to report user errors, and the checks they run
on a config before any work starts."""
import json
import os.path as osp
import sys
from typing import Any, Callable, Iterable, Optional, Sequence

from .errors import DatasetError, DatasetNotFoundError, SpreMMDetError

_TOY_COCO_HINT = 'python tools/make_toy_coco.py'
#: annotation files up to this size are parsed in full by the check (larger: header and tail)
_FULL_PARSE_BYTES = 64 << 20
_COCO_KEYS = ('images', 'annotations', 'categories')


def run_tool(main: Callable[[], Any]) -> None:
    """Run a tool's ``main``; print a :class:`~spre_mmdet.errors.SpreMMDetError` as one
    ``ERROR: ...`` message (no traceback) and exit with status 1. A process group the tool
    initialized is destroyed before exit, however it ends: left to interpreter shutdown, its
    threads can outlive the process state and abort a finished run (exit -6, seen with gloo)."""
    try:
        main()
    except SpreMMDetError as e:
        print(f'ERROR: {e}', file=sys.stderr)
        sys.exit(1)
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def load_tool_config(args) -> Any:
    """The config of ``tools/train.py`` / ``tools/test.py`` as mmdet's tools build it: the file,
    the launcher, ``--cfg-options`` merged, and the work dir (CLI > the config's > the config
    file's name under ``./work_dirs``)."""
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def _iter_dataset_cfgs(ds: Any) -> Iterable[Any]:
    if not isinstance(ds, dict):
        return
    yield ds
    inner = ds.get('dataset')
    if inner is not None:
        yield from _iter_dataset_cfgs(inner)
    for d in ds.get('datasets', None) or []:
        yield from _iter_dataset_cfgs(d)


def _is_remote(path: str) -> bool:
    return '://' in path


def coco_annotation_problem(path: str) -> Optional[str]:
    """Why the COCO-format annotation file ``path`` cannot be used, or ``None``.

    Files up to 64 MiB are parsed in full; a larger one (COCO's own) is checked at its start and
    end only, so the check stays instant: mmdet reads it fully anyway when training starts.
    """
    size = osp.getsize(path)
    if size == 0:
        return 'the file is empty'
    if size <= _FULL_PARSE_BYTES:
        try:
            with open(path, encoding='utf-8') as f:
                content = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            return f'it is not valid JSON ({e})'
        if not isinstance(content, dict):
            return f'it holds a JSON {type(content).__name__}, not a COCO object'
        missing = [key for key in _COCO_KEYS if key not in content]
        return f'it has no {", ".join(map(repr, missing))} (not COCO format)' if missing else None
    with open(path, 'rb') as f:
        head = f.read(1 << 20)
        f.seek(max(0, size - (1 << 20)))
        tail = f.read()
    if not head.lstrip().startswith(b'{'):
        return 'it does not start like a JSON object'
    missing = [key for key in _COCO_KEYS if f'"{key}"'.encode() not in head + tail]
    return f'no {", ".join(map(repr, missing))} found (not COCO format?)' if missing else None


def _is_classification(ds: Any) -> bool:
    """An mmpretrain folder dataset (``CustomDataset``/``ImageNet``): no COCO annotations."""
    return 'coco' not in str(ds.get('type', '')).lower() and not ds.get('ann_file')


def _data_name(ds: Any) -> str:
    return 'imagenet' if _is_classification(ds) else 'coco'


def _generate_hint(cfg: Any, ds: Any, root: str) -> str:
    """How to generate the synthetic set a config reads: the command its ``synthetic_data``
    names (the toy configs declare it next to their ``data_root``), else the generator of the
    dataset's kind."""
    command = cfg.get('synthetic_data', None)
    if isinstance(command, str) and command:
        return f'Generate the synthetic set this config reads with `{command}`'
    if _is_classification(ds):
        out = root.rstrip('/') or 'data/toy_cls'
        return (f'Generate the synthetic classification set with `python tools/make_toy_cls.py '
                f'--out {out}`')
    return f'Generate the synthetic toy COCO set with `{_TOY_COCO_HINT}`'


def check_dataset_paths(cfg: Any, loaders: Sequence[str]) -> None:
    """Raise a :class:`~spre_mmdet.errors.DatasetError` if a dataset of ``cfg.<loader>`` is
    missing, or its COCO annotation file is empty or not COCO JSON.

    Checks ``data_root`` and ``ann_file`` (joined with ``data_root`` when relative, as
    mmengine's ``BaseDataset`` does) of every (wrapped) dataset of the named dataloaders.
    """
    for key in loaders:
        loader = cfg.get(key, None)
        if not isinstance(loader, dict):
            continue
        for ds in _iter_dataset_cfgs(loader.get('dataset')):
            root = ds.get('data_root') or ''
            ann = ds.get('ann_file') or ''
            if not isinstance(root, str) or not isinstance(ann, str):
                continue
            where = f'{key}.dataset: data_root={root!r}, ann_file={ann!r}'
            missing = path = None
            if root and not _is_remote(root) and not osp.exists(root):
                missing = root
            elif ann and not _is_remote(ann):
                path = ann if (osp.isabs(ann) or not root) else osp.join(root, ann)
                if not _is_remote(path) and not osp.exists(path):
                    missing = path
            if missing is not None:
                raise DatasetNotFoundError(
                    f'Dataset not found: {missing} (from {where}). {_generate_hint(cfg, ds, root)}, '
                    f'or point the config at your data, e.g. --cfg-options '
                    f'{key}.dataset.data_root=/path/to/{_data_name(ds)}/')
            if path and path.endswith('.json') and osp.isfile(path):
                problem = coco_annotation_problem(path)
                if problem:
                    raise DatasetError(
                        f'Annotation file {path} (from {where}) cannot be used: {problem}. '
                        'Regenerate or re-download it (the synthetic set: '
                        f'`{_TOY_COCO_HINT}`).')
