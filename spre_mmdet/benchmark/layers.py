"""Which layers of a model can run on 2:4 sparse tensor cores, and the shapes they see."""
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..sparsity.convert import LayerReport, sparsity_report
from ..sparsity.nm import check_nm_tensor, nm_incompatibility
from ..sparsity.record import SparseLayerRecord


@dataclass
class LayerCheck:
    """Validity of one conv/linear layer for the sparse kernels: a row of the sparsity report
    with the benchmark's columns.

    ``candidate``: conv (groups=1, zero padding) or linear with in-channels % M == 0 (and, with
    the checkpoint's records, trained with the kernels' pattern).
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


def _row_reason(row: LayerReport, n: int, m: int, with_records: bool) -> Optional[str]:
    """Why the layer of this sparsity-report row is no ``n:m`` kernel candidate by what it was
    trained as, or ``None`` if it is (or, without records, may be: its weight decides)."""
    if row.method == 'dense':
        return 'not trained sparse (no record in the checkpoint)' if with_records else None
    if row.valid is None:  # sparse but not N:M by design: the row says why
        return row.status
    if row.pattern != f'{n}:{m}':
        return f'trained {row.pattern}: the sparse tensor cores run {n}:{m} only'
    return None


def check_layers(model: nn.Module, scope_prefixes: Optional[Sequence[str]] = None, n: int = 2,
                 m: int = 4, records: Optional[Sequence[SparseLayerRecord]] = None
                 ) -> List[LayerCheck]:
    """The rows of :func:`~spre_mmdet.sparsity.sparsity_report` (the one per-layer walk) with
    the columns the sparse kernels need: is each layer a candidate for the ``n:m`` kernels, is
    it ``n:m``, and why (not).

    Args:
        model: a deploy model, or any model of plain convs and linears.
        scope_prefixes: the module names (and their children) the benchmark times; ``None``:
            all.
        records: the sparse-layer records of the checkpoint (``meta['sparse_layers']`` of a
            deploy checkpoint this package wrote): then only the layers trained ``n:m`` are
            candidates, each as its record says. Without records every layer whose layout
            allows it is checked against ``n:m``.
    """
    checks = []
    for row in sparsity_report(model, records):
        # the module that holds the row's weight: the layer, or an interspace deploy conv's gemm
        name = row.tensor[:-len('weight')].rstrip('.')
        module = model.get_submodule(name)
        kind = 'conv%dx%d' % tuple(module.kernel_size) if isinstance(module, nn.Conv2d) \
            else 'linear'
        scope = in_scope(name, scope_prefixes)
        reason = candidate_reason(module, m) or _row_reason(row, n, m, records is not None)
        if reason is not None:
            checks.append(LayerCheck(name, kind, row.shape, scope, False, False, row.density,
                                     f'dense only: {reason}'))
        elif row.valid is None:  # no record: the weight itself is checked
            check = check_nm_tensor(module.weight.detach(), n, m, max_examples=1)
            checks.append(LayerCheck(name, kind, row.shape, scope, True, check.ok, row.density,
                                     check.explain()))
        else:
            checks.append(LayerCheck(name, kind, row.shape, scope, True, row.valid, row.density,
                                     row.status))
    return checks


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
