"""N:M sparsity core in plain PyTorch: masks, SR-STE, mask learners, SpRe, interspace convs,
the conversion of a model, its per-layer records and re-parameterization.

Nothing here imports mmengine or mmdet. A new mask learner is a :class:`MaskLearner` subclass
decorated with :func:`register_learner`: configs then choose it by ``type`` (its class name),
like every other module.
"""
from .convert import (LayerReport, NotFinalError, check_sparsity_options,
                      format_report, initialize_masks, refresh_masks, reparameterize, sparse_layer_records,
                      sparse_layers, sparsify_layer, sparsify_residual_block, sparsity_report,
                      spre_pairs)
from .interspace import (InterspaceConv2d, InterspaceDeployConv2d, coefficient_learner,
                         interspace_incompatibility, pixel_basis)
from .layers import SparseConv2d, SparseLayerMixin, SparseLinear
from .lbc import LBCMask, cubic_survivors, subset_matrix
from .learners import (LEARNERS, FixedMask, MaskLearner, SRSTEMask, UnstructuredMask,
                       build_learner, register_learner)
from .nm import (NMCheck, check_nm, check_nm_tensor, from_groups,
                 nm_incompatibility, nm_mask, nm_masks, to_groups, unstructured_mask)
from .record import SparseLayerRecord
from .spre import SpReBatchNorm2d, SpReConv2d, fold_batchnorm, spatial_mask
from .srste import (MaskedSTE, add_srste_decay_, apply_mask, masked_ste, register_srste_decay,
                    srste_decay_pairs)

__all__ = [
    'FixedMask', 'InterspaceConv2d', 'InterspaceDeployConv2d', 'LayerReport', 'LBCMask',
    'LEARNERS', 'MaskedSTE', 'MaskLearner', 'NMCheck', 'NotFinalError', 'SparseConv2d',
    'SparseLayerMixin', 'SparseLayerRecord', 'SparseLinear', 'SpReBatchNorm2d', 'SpReConv2d',
    'SRSTEMask', 'UnstructuredMask', 'add_srste_decay_', 'apply_mask', 'build_learner', 'check_nm',
    'check_nm_tensor', 'check_sparsity_options', 'coefficient_learner', 'cubic_survivors',
    'fold_batchnorm', 'format_report', 'from_groups', 'initialize_masks',
    'interspace_incompatibility', 'masked_ste', 'nm_incompatibility', 'nm_mask', 'nm_masks',
    'pixel_basis', 'refresh_masks', 'register_learner', 'register_srste_decay', 'reparameterize',
    'sparse_layer_records', 'sparse_layers', 'sparsify_layer', 'sparsify_residual_block',
    'sparsity_report', 'spatial_mask', 'spre_pairs', 'srste_decay_pairs', 'subset_matrix',
    'to_groups', 'unstructured_mask',
]
