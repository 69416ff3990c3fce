"""Load an mmdet detector for benchmarking and build the forward passes of each scope."""
import contextlib
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

SCOPES = ('backbone', 'backbone+neck', 'detector')
SCOPE_PREFIXES = {'backbone': ['backbone'], 'backbone+neck': ['backbone', 'neck'],
                  'detector': None}


def load_config(config, cfg_options: Optional[dict] = None):
    """An mmengine ``Config`` from a file, from an installed package's config (``'mmdet::
    mask_rcnn/...py'``) or as given (a ``Config``, updated in place), ``cfg_options`` merged."""
    from mmengine.config import Config
    if isinstance(config, Config):
        cfg = config
    elif '::' in config:
        from mmengine.hub import get_config
        cfg = get_config(config)
    else:
        cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def load_detector(config, checkpoint: Optional[str], cfg_options: Optional[dict] = None,
                  return_meta: bool = False):
    """Config (anything :func:`load_config` takes) -> ``MODELS.build`` -> the checkpoint, only
    if it fits (CPU, eval mode); with ``return_meta``, also the checkpoint's ``meta`` (``{}``
    without a checkpoint)."""
    import spre_mmdet  # noqa: F401  (registers modules, applies compat fixes)
    from ..checkpoint import load_checkpoint_checked
    from mmengine.utils import import_modules_from_strings
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    cfg = load_config(config, cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg['custom_imports'])
    register_all_modules()
    model = MODELS.build(cfg.model)
    meta = load_checkpoint_checked(model, checkpoint).get('meta', {}) if checkpoint else {}
    return (model.eval(), meta) if return_meta else model.eval()


def make_inputs(model: nn.Module, batch: int, height: int, width: int, device, dtype
                ) -> Tuple[torch.Tensor, list]:
    """A random normalized batch padded like mmdet's preprocessor, with its data samples."""
    from mmdet.structures import DetDataSample
    div = int(getattr(getattr(model, 'data_preprocessor', None), 'pad_size_divisor', 1) or 1)
    ph, pw = -(-height // div) * div, -(-width // div) * div
    gen = torch.Generator().manual_seed(0)
    inputs = torch.zeros(batch, 3, ph, pw)
    inputs[:, :, :height, :width] = torch.randn(batch, 3, height, width, generator=gen)
    inputs = inputs.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    samples = []
    for _ in range(batch):
        samples.append(DetDataSample(metainfo=dict(
            img_shape=(height, width), ori_shape=(height, width), pad_shape=(ph, pw),
            batch_input_shape=(ph, pw), scale_factor=(1.0, 1.0))))
    return inputs, samples


def scope_runners(model: nn.Module, inputs: torch.Tensor, samples: list,
                  scopes: Sequence[str] = SCOPES) -> Dict[str, Callable[[], object]]:
    """Callables running each scope's forward (the detector one is ``model.predict``, under
    autocast on CUDA so mmdet's fp32 box/NMS code mixes with the half model)."""
    runners: Dict[str, Callable[[], object]] = {}
    cuda = inputs.is_cuda and inputs.dtype in (torch.float16, torch.bfloat16)

    def amp():
        return torch.autocast('cuda', dtype=inputs.dtype) if cuda else contextlib.nullcontext()

    for scope in scopes:
        if scope == 'backbone':
            runners[scope] = lambda: model.backbone(inputs)
        elif scope == 'backbone+neck':
            if getattr(model, 'with_neck', False):
                runners[scope] = lambda: model.neck(model.backbone(inputs))
        elif scope == 'detector':
            def run():
                with amp():
                    return model.predict(inputs, samples, rescale=False)
            runners[scope] = run
        else:
            raise ValueError(f'unknown scope {scope!r}; choose from {SCOPES}')
    return runners
