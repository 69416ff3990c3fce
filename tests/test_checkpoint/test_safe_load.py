"""spre_mmdet.checkpoint.safe_load: broken files are called broken, hostile ones refused."""
import os
import warnings

import pytest
import torch

from spre_mmdet.checkpoint import TRUST_ENV, safe_torch_load
from spre_mmdet.errors import CorruptCheckpointError, UnsafeCheckpointError


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


@pytest.fixture
def good(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': {'w': torch.randn(64, 64)}, 'meta': {'epoch': 1}}, path)
    return path


def _damaged(tmp_path, good, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    later = os.path.getmtime(good) + 10
    os.utime(path, (later, later))  # saved after the good one
    return path


@pytest.mark.parametrize('name, content, what', [
    ('epoch_2.pth', b'', 'empty'),
    ('epoch_2.pth', 'truncate', 'truncated'),
    ('epoch_2.pth', b'hello, this is a text file\n', 'not a PyTorch checkpoint'),
    ('epoch_2.pth', 'legacy-truncate', 'cannot be unpickled'),
])
def test_broken_file_is_corrupt_named_with_previous_checkpoint(tmp_path, good, name, content,
                                                               what, monkeypatch):
    """An empty, truncated, text or cut-off legacy file is reported as corrupt, naming the
    file and the checkpoint saved before it, without the advice to turn safety off."""
    if content == 'truncate':
        content = good.read_bytes()[:len(good.read_bytes()) // 2]
    elif content == 'legacy-truncate':
        legacy = tmp_path / 'legacy.tmp'
        torch.save({'w': torch.randn(8)}, legacy, _use_new_zipfile_serialization=False)
        content = legacy.read_bytes()[:40]
        legacy.unlink()
    path = _damaged(tmp_path, good, name, content)
    for trust in ('', '1'):  # trusting the file does not change the diagnosis
        monkeypatch.setenv(TRUST_ENV, trust)
        with pytest.raises(CorruptCheckpointError) as info, warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the trust warning is not under test here
            safe_torch_load(str(path))
        message = str(info.value)
        assert str(path) in message and 'corrupt or truncated' in message
        assert what in message, message
        assert str(good) in message  # the previous checkpoint
        assert f'{TRUST_ENV}=1' not in message


def test_hostile_file_is_still_refused_as_unsafe(tmp_path):
    """A file pickling os.system is refused as unsafe (never unpickled), naming the global."""
    marker = tmp_path / 'PWNED'
    path = tmp_path / 'boom.pth'
    torch.save({'meta': _Boom(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_torch_load(str(path))
    assert 'system' in str(info.value) and not marker.exists()
    assert any('system' in name for name in info.value.unsafe_globals)


def test_intact_file_loads(good):
    """An intact runner-style checkpoint loads weights-only."""
    assert safe_torch_load(str(good))['meta']['epoch'] == 1
