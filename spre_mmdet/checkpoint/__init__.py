"""Checkpoint files: safe loading (no pickled code, broken files called broken), the model state
dict inside a checkpoint (:func:`state_dict_of`, the one place it is taken from), loading a state
dict only into a model it fits, and import of the authors' released reference checkpoints
(:mod:`spre_mmdet.checkpoint.reference`, plain PyTorch)."""
from .matching import (STATE_DICT_KEYS, load_checkpoint_checked, load_state_checked,
                       mismatch_error, resnet_layout, state_dict_of, structures)
from .reference import (FORMATS, ConvertedCheckpoint, ReferenceFormatError, convert_reference,
                        detect_depth, detect_layout)
from .safe_load import SAFE_GLOBALS, TRUST_ENV, register_safe_globals, safe_torch_load

__all__ = ['FORMATS', 'SAFE_GLOBALS', 'STATE_DICT_KEYS', 'TRUST_ENV', 'ConvertedCheckpoint',
           'ReferenceFormatError', 'convert_reference', 'detect_depth', 'detect_layout',
           'load_checkpoint_checked', 'load_state_checked',
           'mismatch_error', 'register_safe_globals', 'resnet_layout', 'safe_torch_load',
           'state_dict_of', 'structures']
