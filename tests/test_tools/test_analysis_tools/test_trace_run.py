"""tools/analysis_tools/trace_run.py: digests and the comparison of two traces (no training)."""
import json

import pytest
import torch


@pytest.fixture(scope='module')
def tr():
    import trace_run
    return trace_run


def test_state_digest_sees_one_ulp(tr):
    model = torch.nn.Linear(3, 2)
    before = tr._state_digest(model)
    assert tr._state_digest(model) == before
    with torch.no_grad():
        model.weight[0, 0] = torch.nextafter(model.weight[0, 0], torch.tensor(10.0))
    assert tr._state_digest(model) != before


def test_module_hooks_record_call_order(tr):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    calls = []
    handles = tr._module_hooks(model, calls)
    model(torch.ones(2, 3))
    for h in handles:
        h.remove()
    assert [name for name, _ in calls] == ['0', '1', '2', '<model>']
    model(torch.ones(2, 3))
    assert len(calls) == 4  # hooks removed


def _trace(path, losses, states, modules=(('a', '1'), ('b', '2'))):
    steps = [dict(iter=i + 1, batch='x', losses=dict(loss=l), state=s)
             for i, (l, s) in enumerate(zip(losses, states))]
    path.write_text(json.dumps(dict(decoded_images={'train': 'd'}, initial_state='s0',
                                    first_iter_modules=[list(m) for m in modules], steps=steps)))
    return str(path)


def test_compare(tr, tmp_path, capsys):
    a = _trace(tmp_path / 'a.json', [1.0, 0.5], ['s1', 's2'])
    assert tr.compare(a, _trace(tmp_path / 'same.json', [1.0, 0.5], ['s1', 's2'])) == 0
    assert 'identical over 2 iterations' in capsys.readouterr().out
    b = _trace(tmp_path / 'b.json', [1.0, 0.5000001], ['s1', 's2'],
               modules=(('a', '1'), ('b', '3')))
    assert tr.compare(a, b) == 1
    out = capsys.readouterr().out
    assert 'first differing module output #1 of 2: b' in out
    assert 'iter 2: differs in' in out and 'loss' in out


def test_the_command_line_compares_and_needs_a_config(tr, tmp_path, capsys):
    a = _trace(tmp_path / 'a.json', [1.0], ['s1'])
    assert tr.main(['--compare', a, a]) == 0
    assert 'identical over 1 iterations' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tr.main([])  # CONFIG is required unless --compare is given
