"""The errors spre-mmdet reports to users.

Everything a user can fix (a bad config, an unsafe, corrupt or mismatched checkpoint, a missing
dataset, an export target that would lose data) raises a subclass of :class:`SpreMMDetError`
whose message says what is wrong and how to fix it. The tools print such an error as one
``ERROR: ...`` line and exit with status 1 (:func:`spre_mmdet.cli.run_tool`); any other
exception is a bug and keeps its traceback.

Plain Python with no imports, so the PyTorch-only core (:mod:`spre_mmdet.sparsity`) uses it too.
Each class also derives from the builtin a caller would naturally catch (``ValueError`` for a
bad option, ``FileNotFoundError`` for a missing dataset, ...).
"""


class SpreMMDetError(Exception):
    """Base class of every error this package reports to users (message = what to do)."""


class ConfigError(SpreMMDetError, ValueError):
    """A configuration that cannot work (checked before training starts)."""


class CheckpointError(SpreMMDetError, RuntimeError):
    """A checkpoint that cannot be used as given."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds pickled objects outside the allowlist (refused, never unpickled)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is empty, truncated or not a checkpoint at all."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the model built from the config (keys or shapes differ)."""


class DatasetError(SpreMMDetError, ValueError):
    """A dataset named in the config cannot be used (e.g. an empty annotation file)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset file or folder named in the config does not exist."""


class ExportError(SpreMMDetError, RuntimeError):
    """A model or an export target cannot be exported as asked."""


class NotFinalError(SpreMMDetError, RuntimeError):
    """A mask learner is not exactly N:M yet (e.g. LBC before the end of its schedule)."""


class TorchvisionUnavailableError(SpreMMDetError, ImportError):
    """A ``torchvision://`` checkpoint was requested but torchvision cannot be imported."""


class StackError(SpreMMDetError, RuntimeError):
    """The installed stack cannot run what was asked (e.g. mmcv without CUDA ops on a GPU)."""
