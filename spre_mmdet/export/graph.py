"""The weights of an ONNX graph, mapped back to the deploy model's layers, checked N:M.

An exporter may fold a BatchNorm into the conv before it (a per-output-channel scale: N:M
groups survive), rename or deduplicate initializers, route a weight through ``Identity`` or a
``Constant`` node, or store a linear layer's weight transposed for ``Gemm(transB=0)`` /
``MatMul``. :func:`graph_weights` undoes all of that: it returns the constant weight each
``Conv``/``ConvTranspose``/``Gemm``/``MatMul`` node computes with, in PyTorch's layout (output
channels first, input channels second), and the module it belongs to, found from

* the initializer's name when it is a parameter name (the dynamo exporter keeps them, also
  for BN-folded weights, under a wrapper module's prefix such as ``inner.``), else
* the node's scope name (the TorchScript exporter names nodes
  ``/backbone/layer1/layer1.0/conv1/Conv``; mmdeploy's rewritten heads drop some outer scopes,
  e.g. ``/bbox_head/shared_fcs.0/Gemm``, which match by their tail).

:func:`check_graph_nm` then checks every N:M layer of the deploy checkpoint in the graph with
:func:`spre_mmdet.sparsity.check_nm_tensor` (groups of M along the input channels, per output
channel and kernel position) and compares the zero pattern with the checkpoint's: a layer that
is missing from the graph, not N:M, or has non-zeros where the checkpoint has zeros is a
problem, never skipped.
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..sparsity import SparseLayerRecord, check_nm_tensor

#: ONNX ops whose second input is a weight: op -> (input index of the weight)
WEIGHT_OPS = {'Conv': 1, 'ConvTranspose': 1, 'Gemm': 1, 'MatMul': 1}
_REPEAT = re.compile(r'_\d+$')


@dataclass
class GraphWeight:
    """One weight a node of the graph computes with.

    Attributes:
        node: the node's name; op: its type.
        initializer: the name of the initializer (or Constant output) holding the weight.
        module: the deploy model's module it belongs to (dotted), ``None`` if not found.
        array: the weight in PyTorch's layout (``(out, in, *kernel)``; a ``Gemm(transB=0)`` or
            ``MatMul`` weight transposed back to ``(out, in)``).
        transposed: whether it was transposed back.
    """

    node: str
    op: str
    initializer: str
    module: Optional[str]
    array: np.ndarray = field(repr=False)
    transposed: bool = False


def _attribute(node, name: str, default=None):
    import onnx
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def constants(model) -> Dict[str, np.ndarray]:
    """Every constant value of the graph by name: initializers, ``Constant`` node outputs and
    ``Identity`` copies of those (followed transitively)."""
    from onnx import numpy_helper
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == 'Constant':
            for attr in node.attribute:
                if attr.name == 'value':
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    aliases = {node.output[0]: node.input[0] for node in model.graph.node
               if node.op_type == 'Identity'}
    for name in list(aliases):
        source, seen = aliases[name], {name}
        while source in aliases and source not in seen:  # Identity of an Identity
            seen.add(source)
            source = aliases[source]
        if source in values:
            values[name] = values[source]
    return values


def _source_name(model, name: str) -> str:
    """The initializer (or Constant output) an ``Identity`` chain ending in ``name`` copies."""
    aliases = {node.output[0]: node.input[0] for node in model.graph.node
               if node.op_type == 'Identity'}
    seen = set()
    while name in aliases and name not in seen:
        seen.add(name)
        name = aliases[name]
    return name


def scope_module(node_name: str) -> Optional[str]:
    """The dotted module name in a TorchScript-exported node name, or ``None``.

    ``/backbone/layer1/layer1.0/conv1/Conv`` -> ``backbone.layer1.0.conv1`` (a container's
    child is named ``<container>.<index>`` one level below the container)."""
    if not node_name.startswith('/'):
        return None
    parts = [p for p in node_name.strip('/').split('/')[:-1] if p]
    names: List[str] = []
    for part in parts:
        if names and part.startswith(names[-1] + '.'):
            names[-1] = part
        else:
            names.append(part)
    return '.'.join(names) or None


def graph_weights(model, state_keys: Sequence[str] = ()) -> List[GraphWeight]:
    """The constant weight of every Conv/ConvTranspose/Gemm/MatMul node, in PyTorch layout, with
    the module it belongs to (see the module doc); nodes whose weight is computed at run time
    are left out."""
    values = constants(model)
    keys = set(state_keys)
    weights = []
    for node in model.graph.node:
        index = WEIGHT_OPS.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in values:
            continue
        name = _source_name(model, node.input[index])
        array = values[node.input[index]]
        transposed = False
        if node.op_type == 'Gemm' and not _attribute(node, 'transB', 0) and array.ndim == 2:
            array, transposed = array.T, True  # stored (in, out)
        elif node.op_type == 'MatMul' and array.ndim == 2:
            array, transposed = array.T, True  # x @ W: W is (in, out)
        elif node.op_type == 'ConvTranspose':
            array, transposed = np.swapaxes(array, 0, 1), True  # stored (in, out, *k)
        if name.endswith('.weight') and (name in keys or not name.startswith('onnx::')):
            module = name[:-len('.weight')]  # a parameter name (perhaps under a wrapper's)
        else:
            module = scope_module(node.name)
        weights.append(GraphWeight(node.name, node.op_type, name, module,
                                   np.ascontiguousarray(array), transposed))
    return weights


def _candidates(module: str) -> Tuple[str, ...]:
    """``module`` and, for a module called more than once (``rpn_conv_1``), the name without
    the TorchScript exporter's repeat suffixes."""
    plain = '.'.join(_REPEAT.sub('', part) for part in module.split('.'))
    return (module,) if plain == module else (module, plain)


def match_records(weights: Sequence[GraphWeight], modules: Sequence[str]
                  ) -> Dict[str, List[GraphWeight]]:
    """Which graph weights belong to each of ``modules`` (dotted deploy-model names): exact
    names first; else a graph name that is the unique tail of one module name (outer scopes an
    mmdeploy rewrite dropped), or a graph name ending in exactly one module name (a wrapper's
    scopes in front, e.g. the fp16 wrapper's ``inner.``)."""
    found: Dict[str, List[GraphWeight]] = {module: [] for module in modules}
    for weight in weights:
        if weight.module is None:
            continue
        for name in _candidates(weight.module):
            if name in found:
                found[name].append(weight)
                break
            matches = [m for m in modules if m.endswith('.' + name)] or \
                      [m for m in modules if name.endswith('.' + m)]
            if len(matches) == 1:
                found[matches[0]].append(weight)
                break
    return found


@dataclass
class GraphLayerCheck:
    """The check of one N:M layer in an ONNX graph (one row of the export report)."""

    name: str
    tensor: str
    pattern: str
    nodes: List[str]
    initializers: List[str]
    shape: Optional[List[int]]
    ok: bool
    problem: str = ''

    def to_dict(self) -> dict:
        return dict(name=self.name, tensor=self.tensor, pattern=self.pattern, nodes=self.nodes,
                    initializers=self.initializers, shape=self.shape, ok=self.ok,
                    problem=self.problem)


def check_graph_nm(model, records: Sequence[SparseLayerRecord],
                   state: Mapping[str, torch.Tensor]) -> List[GraphLayerCheck]:
    """Check every N:M record (``record.nm``) against the weight(s) the graph uses for it.

    A layer passes when the graph uses at least one constant weight for it, of the
    checkpoint's shape, exactly ``n:m`` along the input channels, and non-zero only where the
    checkpoint's weight is (a folded BN may only scale output channels, or zero them).

    Args:
        model: a loaded ``onnx.ModelProto``.
        records: the deploy checkpoint's ``meta['sparse_layers']`` (those in the graph's scope).
        state: the deploy state dict (for shapes and zero patterns).
    """
    weights = graph_weights(model, list(state))
    records = [record for record in records if record.nm]
    modules = {record.tensor[:-len('.weight')]: record for record in records}
    found = match_records(weights, list(modules))
    rows = []
    for module, record in modules.items():
        matched = found[module]
        expected = state[record.tensor]
        row = GraphLayerCheck(record.name, record.tensor, record.pattern,
                              sorted({w.node for w in matched}),
                              sorted({w.initializer for w in matched}),
                              list(matched[0].array.shape) if matched else None, ok=False)
        problems = []
        if not matched:
            problems.append('no node of the graph computes with this weight (not found by '
                            'initializer or scope name)')
        for weight in matched:
            array = weight.array
            where = f'{weight.node} ({weight.initializer})'
            if tuple(array.shape) != tuple(expected.shape):
                problems.append(f'{where}: shape {list(array.shape)}, the checkpoint has '
                                f'{list(expected.shape)}')
                continue
            check = check_nm_tensor(torch.from_numpy(np.array(array)), record.n, record.m)
            if not check.ok:
                problems.append(f'{where}: {check.explain()}')
            extra = int(np.count_nonzero((array != 0) & (expected.numpy() == 0)))
            if extra:
                problems.append(f'{where}: {extra} non-zeros where the checkpoint has zeros '
                                '(another zero pattern)')
        row.ok = not problems
        row.problem = '; '.join(problems)
        rows.append(row)
    return rows
