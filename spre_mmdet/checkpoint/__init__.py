"""Checkpoint files: safe loading (no pickled code, broken files called broken) and loading a
state dict only into a model it fits."""
from .matching import (load_checkpoint_checked, load_state_checked, mismatch_error,
                       resnet_layout, state_dict_of, structures)
from .safe_load import SAFE_GLOBALS, TRUST_ENV, register_safe_globals, safe_torch_load

__all__ = ['SAFE_GLOBALS', 'TRUST_ENV', 'load_checkpoint_checked', 'load_state_checked',
           'mismatch_error', 'register_safe_globals', 'resnet_layout', 'safe_torch_load',
           'state_dict_of', 'structures']
