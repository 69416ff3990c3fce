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
from .srste import SRSTEFunction, apply_mask, srste

__all__ = [
    'LEARNERS', 'FixedMask', 'InterspaceConv2d', 'InterspaceDeployConv2d', 'LBCMask', 'LayerReport',
    'MaskLearner', 'NMCheck', 'NotFinalError', 'SRSTEFunction', 'SRSTEMask', 'SparseConv2d',
    'SparseLayerMixin', 'SparseLayerRecord', 'SparseLinear', 'SpReBatchNorm2d', 'SpReConv2d',
    'UnstructuredMask', 'apply_mask', 'build_learner', 'check_nm', 'check_nm_tensor', 'check_sparsity_options',
    'coefficient_learner', 'cubic_survivors', 'fold_batchnorm', 
    'format_report', 'from_groups', 'nm_masks',
    'initialize_masks', 'interspace_incompatibility', 'nm_incompatibility', 'nm_mask',
    'pixel_basis', 'refresh_masks', 'register_learner', 'reparameterize', 'sparse_layer_records',
    'sparse_layers', 'sparsify_layer', 'sparsify_residual_block', 'sparsity_report', 'spre_pairs', 'spatial_mask', 'srste',
    'subset_matrix', 'to_groups', 'unstructured_mask'
]
