"""The optional dependencies of the ONNX / TensorRT path, imported only when used."""
import importlib
from typing import Optional

from ..errors import ExportError

ONNX_EXTRA = "pip install -e '.[onnx]'"
TENSORRT_EXTRA = "pip install -e '.[tensorrt]'"
#: import name -> what it is needed for
PURPOSES = {'onnx': 'reading ONNX graphs', 'onnxruntime': 'running ONNX graphs on the CPU',
            'onnxscript': "torch.onnx's dynamo exporter",
            'mmdeploy': 'exporting the whole detector (mmdeploy rewrites)',
            'tensorrt': 'building TensorRT engines'}


class MissingDependencyError(ExportError, ImportError):
    """An optional dependency of the ONNX / TensorRT path is not installed."""


def missing(module: str) -> Optional[str]:
    """Why ``module`` cannot be imported, or ``None`` when it can."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        return f'{type(e).__name__}: {e}'
    return None


def require(*modules: str) -> None:
    """Raise :class:`MissingDependencyError` naming every module that does not import, what it
    is for, and the install command."""
    problems = [(m, missing(m)) for m in modules]
    problems = [(m, why) for m, why in problems if why]
    if problems:
        extra = TENSORRT_EXTRA if any(m == 'tensorrt' for m, _ in problems) else ONNX_EXTRA
        listed = '; '.join(f'{m} (for {PURPOSES.get(m, m)}): {why}' for m, why in problems)
        raise MissingDependencyError(f'Missing optional dependencies: {listed}. Install them '
                                     f'with {extra}.')
