"""N:M sparsity core in plain PyTorch: masks, SR-STE, mask learners, SpRe, model conversion.

Nothing here imports mmengine or mmdet.
"""
from .convert import (MERGED, LayerReport, NotFinalError, check_sparsity_options, format_report,
                      initialize_masks, spre_pairs,
                      refresh_masks, reparameterize, sparse_kinds, sparse_layers,
                      sparsify_layer, sparsity_report)
from .interspace import (InterspaceConv2d, InterspaceDeployConv2d, interspace_incompatibility,
                         interspace_layer, merge_interspace, pixel_basis)
from .layers import SparseConv2d, SparseLayerMixin, SparseLinear
from .learners import (FixedMask, MaskLearner, SRSTEMask, build_learner, register_learner)
from .lbc import LBCMask, cubic_survivors, subset_matrix
from .nm import (NMCheck, check_nm, check_nm_tensor, from_groups, nm_incompatibility, nm_mask,
                 to_groups, unstructured_mask)
from .spre import SpReBatchNorm2d, SpReConv2d, fold_batchnorm, spatial_mask
from .srste import SRSTEFunction, srste

__all__ = [
    'InterspaceConv2d', 'InterspaceDeployConv2d', 'interspace_incompatibility',
    'interspace_layer', 'merge_interspace', 'pixel_basis', 'LBCMask', 'cubic_survivors',
    'subset_matrix', 'MERGED', 'check_sparsity_options', 'LayerReport', 'NotFinalError', 'format_report',
    'initialize_masks', 'refresh_masks', 'reparameterize', 'sparse_kinds', 'sparse_layers',
    'sparsify_layer', 'sparsity_report', 'spre_pairs', 'SparseConv2d', 'SparseLayerMixin', 'SparseLinear',
    'FixedMask', 'MaskLearner', 'SRSTEMask', 'build_learner', 'register_learner', 'NMCheck',
    'check_nm', 'check_nm_tensor', 'from_groups', 'nm_incompatibility', 'nm_mask', 'to_groups',
    'unstructured_mask', 'SpReBatchNorm2d', 'SpReConv2d', 'fold_batchnorm', 'spatial_mask',
    'SRSTEFunction', 'srste'
]
