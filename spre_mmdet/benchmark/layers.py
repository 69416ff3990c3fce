"""Which layers of a model can run on 2:4 sparse tensor cores, and the shapes they see."""
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..sparsity.nm import check_nm_tensor, nm_incompatibility
from ..sparsity.record import SparseLayerRecord


@dataclass
class LayerCheck:
    """Validity of one conv/linear layer for the sparse kernels.

    ``candidate``: conv (groups=1, zero padding) or linear with in-channels % M == 0.
    ``valid``: candidate whose weight is exactly N:M in the hardware layout.
    ``status``: ``check_nm_tensor(...).explain()`` or why the layer is not a candidate.
    """

    name: str
    kind: str
    weight_shape: Tuple[int, ...]
    in_scope: bool
    candidate: bool
    valid: bool
    density: float
    status: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d['weight_shape'] = list(self.weight_shape)
        return d


def candidate_reason(module: nn.Module, m: int = 4) -> Optional[str]:
    """Why ``module`` cannot be a sparse-GEMM candidate, or ``None`` if it can."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f'grouped conv (groups={module.groups})'
        if isinstance(module.padding, str):
            return f'padding={module.padding!r} (explicit padding needed)'
        if module.padding_mode != 'zeros':
            return f'padding_mode={module.padding_mode!r}'
    elif not isinstance(module, nn.Linear):
        return f'{type(module).__name__} is not a Conv2d/Linear'
    return nm_incompatibility(module.weight.shape, m)


def in_scope(name: str, prefixes: Optional[Sequence[str]]) -> bool:
    if prefixes is None:
        return True
    return any(name == p or name.startswith(p + '.') for p in prefixes)


#: the pattern NVIDIA's sparse tensor cores run (cuSPARSELt / CUTLASS semi-structured)
KERNEL_PATTERN = (2, 4)


def _record_reason(record: Optional[SparseLayerRecord], n: int, m: int) -> Optional[str]:
    """Why a layer with this record (``None``: not trained sparse) is no sparse-kernel
    candidate, or ``None`` if it is."""
    if record is None:
        return 'not trained sparse (no record in the checkpoint)'
    if not record.nm:
        return record.note
    if (record.n, record.m) != (n, m):
        return f'trained {record.pattern}: the sparse tensor cores run {n}:{m} only'
    return None


def check_layers(model: nn.Module, scope_prefixes: Optional[Sequence[str]] = None, n: int = 2,
                 m: int = 4, records: Optional[Sequence[SparseLayerRecord]] = None
                 ) -> List[LayerCheck]:
    """Every Conv2d/Linear of ``model``: is it a candidate for the ``n:m`` sparse kernels, is it
    ``n:m``, and why (not).

    Args:
        records: the sparse-layer records of the checkpoint (``meta['sparse_layers']`` of a
            deploy checkpoint this package wrote): then only the layers trained ``n:m`` are
            candidates, each as its record says. Without records every layer whose layout
            allows it is checked against ``n:m``.
    """
    by_tensor = None if records is None else {r.tensor: r for r in records}
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight = module.weight.detach()
        kind = 'conv%dx%d' % tuple(module.kernel_size) if isinstance(module, nn.Conv2d) \
            else 'linear'
        reason = candidate_reason(module, m)
        if reason is None and by_tensor is not None:
            reason = _record_reason(by_tensor.get(f'{name}.weight'), n, m)
        density = float((weight != 0).float().mean())
        if reason is not None:
            rows.append(LayerCheck(name, kind, tuple(weight.shape), in_scope(name, scope_prefixes),
                                   False, False, density, f'dense only: {reason}'))
            continue
        check = check_nm_tensor(weight, n, m, max_examples=1)
        rows.append(LayerCheck(name, kind, tuple(weight.shape), in_scope(name, scope_prefixes),
                               True, check.ok, density, check.explain()))
    return rows


def format_checks(rows: Iterable[LayerCheck]) -> str:
    """Aligned text table of :func:`check_layers` rows."""
    header = ('layer', 'kind', 'shape', 'density', 'scope', 'N:M status')
    lines = [(r.name, r.kind, 'x'.join(map(str, r.weight_shape)), f'{r.density:.3f}',
              'yes' if r.in_scope else 'no', r.status) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = '  '.join('{:<%d}' % w for w in widths[:-1]) + '  {}'
    return '\n'.join(fmt.format(*row) for row in [header, *lines])


@torch.no_grad()
def capture_input_shapes(model: nn.Module, names: Iterable[str],
                         run: Callable[[], object]) -> Dict[str, List[Tuple[int, ...]]]:
    """Run ``run()`` once with forward pre-hooks on the named layers and return, per layer, the
    input shape of every call (a shared head is called once per FPN level)."""
    modules = dict(model.named_modules())
    shapes: Dict[str, List[Tuple[int, ...]]] = {name: [] for name in names}
    handles = []
    for name in shapes:
        def hook(mod, args, _name=name):
            shapes[_name].append(tuple(args[0].shape))
        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return shapes


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace ``model.<name>`` by ``new``; return the old module."""
    parent_name, _, child = name.rpartition('.')
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


class swapped:
    """Context manager: temporarily replace named submodules (restored on exit)."""

    def __init__(self, model: nn.Module, replacements: Dict[str, nn.Module]):
        self.model, self.replacements, self.old = model, replacements, {}

    def __enter__(self):
        for name, new in self.replacements.items():
            self.old[name] = set_module(self.model, name, new)
        return self.model

    def __exit__(self, *exc):
        for name, old in self.old.items():
            set_module(self.model, name, old)
        self.old = {}
        return False
