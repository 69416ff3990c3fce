"""spre-mmdet: N:M sparse training of MMDetection detectors.

Importing this package registers its backbones and hooks into mmdet's registries, so a config
only needs ``custom_imports = dict(imports=['spre_mmdet'], allow_failed_imports=False)``.
The algorithms themselves live in :mod:`spre_mmdet.sparsity` (plain PyTorch), which also
imports where mmdet is not installed. Where mmdet is installed but cannot be imported (an mmcv
of another version, ops built for another torch), the import raises one
:class:`~spre_mmdet.errors.StackError` naming the packages and the fix.
"""
import sys
from importlib import metadata

from .errors import SpreMMDetError, StackError
from .version import __version__

__all__ = ['__version__']


def _stack_error(exc: BaseException) -> StackError:
    """The error for an OpenMMLab stack that is installed but broken. An uncaught one prints as
    a single line (a tool's output), not as a traceback."""
    installed = []
    for name in ('torch', 'mmcv', 'mmengine', 'mmdet'):
        try:
            installed.append(f'{name} {metadata.version(name)}')
        except metadata.PackageNotFoundError:
            installed.append(f'{name} missing')
    error = StackError(
        f'mmdet cannot be imported ({type(exc).__name__}: {exc}); installed: '
        f'{", ".join(installed)}. spre_mmdet needs mmdet 3.3.0 with mmengine 0.10.7 and mmcv '
        '2.1.0 built with ops against the installed torch. Fix: run `bash scripts/install.sh` '
        '(`make install`), which installs that stack (docs/gpu.md for GPU machines).')
    previous = sys.excepthook

    def one_line(kind, value, traceback):
        if value is error:
            print(f'ERROR: {value}', file=sys.stderr)
        else:
            previous(kind, value, traceback)
    sys.excepthook = one_line
    return error


try:
    import mmdet  # noqa: F401
except ImportError as e:
    if e.name != 'mmdet':  # mmdet is there, something it imports is not
        raise _stack_error(e) from None
    # mmdet is not installed: plain-PyTorch use of spre_mmdet.sparsity
except Exception as e:  # noqa: BLE001  (mmdet's mmcv version assertion, a broken _ext, ...)
    raise _stack_error(e) from None
else:
    try:
        from . import compat  # noqa: F401  (fixes for current torch/mmengine, applied on import)
        from .hooks import ReparameterizeHook, SparsityHook  # noqa: F401
        from .models import SparseResNet  # noqa: F401
    except SpreMMDetError:
        raise
    except Exception as e:  # noqa: BLE001  (mmcv's ops, mmengine, mmpretrain)
        raise _stack_error(e) from None
    __all__ += ['ReparameterizeHook', 'SparseResNet', 'SparsityHook']
