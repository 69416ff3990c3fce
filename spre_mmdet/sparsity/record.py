"""One description of a sparse layer, which every report, deploy check and tool reads.

A sparse layer describes itself (:meth:`SparseLayerMixin.record
<spre_mmdet.sparsity.layers.SparseLayerMixin.record>`): its name, the mask learner, its
structure (plain N:M, SpRe block, interspace conv), its own N:M pattern, and which tensor of the
deploy model must be exactly N:M (or why none has to be). The export writes the records into
the deploy checkpoint's ``meta['sparse_layers']``, so tools that see only the deploy model (the
benchmark) read the same description.
"""
from dataclasses import asdict, dataclass
from typing import Dict

#: the structures a sparse layer can have
STRUCTURES = ('plain', 'spre', 'interspace')


@dataclass(frozen=True)
class SparseLayerRecord:
    """What one sparse layer is, and what its deploy form must satisfy.

    Attributes:
        name: module name in the training-time model (= in the deploy model).
        method: the mask learner (``'srste'``, ``'asp'``, ``'lbc'``, ``'unstructured'``).
        structure: ``'plain'``, ``'spre'`` (folded into one conv at deploy) or
            ``'interspace'`` (basis conv + 1x1, or merged into a dense conv).
        n, m: the layer's own pattern.
        nm: whether :attr:`tensor` must be exactly ``n:m`` in the deploy model.
        tensor: state-dict key, in the deploy model, of the tensor that carries the sparsity
            (a conv's ``weight``, or an interspace conv's ``gemm.weight``).
        note: why :attr:`tensor` is not N:M by design, when :attr:`nm` is False.
    """

    name: str
    method: str
    structure: str
    n: int
    m: int
    nm: bool
    tensor: str
    note: str = ''

    @property
    def label(self) -> str:
        """How reports name it: the learner, with the structure when not plain."""
        return self.method if self.structure == 'plain' else f'{self.method}+{self.structure}'

    @property
    def pattern(self) -> str:
        return f'{self.n}:{self.m}'

    def to_dict(self) -> Dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict) -> 'SparseLayerRecord':
        return cls(**data)
