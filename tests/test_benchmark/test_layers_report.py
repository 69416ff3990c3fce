import csv
import json

import pytest
import torch
from torch import nn

from spre_mmdet.benchmark import (CSV_COLUMNS, GemmLayer, build_report,
                                  capture_input_shapes, check_layer_cpu, check_layers, compare,
                                  compare_outputs, dispatch_decisions, format_e2e_table,
                                  format_layer_table, layer_calls, sparse_support, summarize,
                                  swapped, write_all)
from spre_mmdet.sparsity.nm import nm_mask


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.sparse = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.dense = nn.Conv2d(16, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.sparse.weight.mul_(nm_mask(self.sparse.weight, 2, 4))

    def forward(self, x):
        x = self.sparse(self.sparse(self.stem(x)))  # shared layer: two calls
        x = self.grouped(self.dense(x))
        return self.fc(x.mean((2, 3)))


def test_validity_flags_non_nm_layers_with_reason():
    """check_layers marks only the 2:4 layer valid and says why each other layer is not."""
    rows = {r.name: r for r in check_layers(Tiny(), ['sparse', 'dense'])}
    assert rows['sparse'].valid and rows['sparse'].candidate and rows['sparse'].in_scope
    assert 'valid' in rows['sparse'].status
    assert not rows['dense'].valid and rows['dense'].candidate
    assert 'groups exceed 2 non-zeros' in rows['dense'].status and 'out=' in rows['dense'].status
    assert not rows['stem'].candidate and 'not divisible by M=4' in rows['stem'].status
    assert not rows['grouped'].candidate and 'grouped conv' in rows['grouped'].status
    assert not rows['fc'].in_scope and not rows['fc'].valid
    assert rows['sparse'].density == pytest.approx(0.5)


def test_capture_records_every_call_and_removes_hooks():
    """Forward pre-hooks record the input shape of each call (shared layers twice), then go."""
    model = Tiny()
    shapes = capture_input_shapes(model, ['sparse', 'fc'], lambda: model(torch.randn(2, 3, 8, 6)))
    assert shapes == {'sparse': [(2, 16, 8, 6)] * 2, 'fc': [(2, 8)]}
    assert not model.sparse._forward_pre_hooks
    calls = layer_calls(model.sparse, shapes['sparse'])
    assert calls[0] == dict(in_shape=[2, 16, 8, 6], M=96, N=16, K=144)


def test_swapped_model_matches_and_restores():
    """Swapping 2:4 layers for their GEMM form keeps the output; the originals come back."""
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(1, 3, 9, 9)
    original = model.sparse
    repl = {'sparse': GemmLayer.from_module(model.sparse)}
    res = compare_outputs(model, lambda: model(x), repl, torch.float32)
    assert res['ok'] and res['rel_err'] < 1e-4
    assert model.sparse is original
    with swapped(model, repl):
        assert isinstance(model.sparse, GemmLayer)
    assert model.sparse is original


def test_cpu_reference_check_passes_and_detects_mismatch():
    """CPU reference: masked im2col GEMM == conv for a 2:4 layer; a wrong answer fails compare."""
    conv = Tiny().sparse
    res = check_layer_cpu(conv, [(4, 16, 100, 90)], max_spatial=16)
    assert res['ok'] and res['max_abs_err'] < 1e-4
    ref = torch.randn(10, 10)
    assert not compare(ref + 0.1 * ref.abs().max(), ref, torch.float16)['ok']
    assert compare(ref + 1e-3 * ref.abs().max(), ref, torch.float16)['ok']


def test_dispatch_picks_sparse_only_where_faster():
    """Per-layer dispatch: sparse only where the measured speedup beats the threshold."""
    layers = [dict(name='a', speedup=1.3), dict(name='b', speedup=0.8), dict(name='c', speedup=None)]
    assert dispatch_decisions(layers) == dict(a='sparse', b='dense', c='dense')
    assert dispatch_decisions(layers, min_speedup=1.5)['a'] == 'dense'


def test_summarize_median_iqr():
    """summarize gives median, quartiles and IQR of the samples."""
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s['median_ms'] == 3.0 and s['q1_ms'] == 2.0 and s['q3_ms'] == 4.0
    assert s['iqr_ms'] == 2.0 and s['repeats'] == 5


def test_sparse_support_without_gpu_says_why():
    """A CPU device is refused with the 'needs an NVIDIA Ampere or newer GPU' reason."""
    ok, reason = sparse_support('cpu')
    assert not ok and 'needs an NVIDIA Ampere or newer GPU' in reason


def _timed_layer(name, dense, sparse):
    return dict(name=name, kind='conv3x3', weight_shape=[64, 64, 3, 3], valid=True,
                calls=[dict(in_shape=[1, 64, 8, 8], M=64, N=64, K=576)], dense_ms=dense,
                sparse_ms=sparse, im2col_ms=0.01, sparse_gemm_ms=sparse - 0.01,
                dense_gemm_ms=dense - 0.01, dense_iqr_ms=0.001, sparse_iqr_ms=0.001,
                speedup=dense / sparse, gemm_speedup=(dense - 0.01) / (sparse - 0.01),
                dispatch='sparse' if dense > sparse else 'dense', note=None,
                numerics=dict(max_abs_err=1e-3, max_abs_ref=1.0, rel_err=1e-3, ok=True))


@pytest.mark.parametrize('timed', [True, False])
def test_report_files(tmp_path, timed):
    """JSON has the documented keys, CSV the documented columns, and the PNG is written."""
    layers = [_timed_layer('l1', 0.2, 0.15), _timed_layer('l2', 0.1, 0.12)]
    if not timed:
        for lay in layers:
            for k in ('dense_ms', 'sparse_ms', 'im2col_ms', 'sparse_gemm_ms', 'dense_gemm_ms',
                      'speedup', 'gemm_speedup', 'dispatch', 'dense_iqr_ms', 'sparse_iqr_ms'):
                lay[k] = None
    e2e = {'backbone': dict(dense_ms=1.0 if timed else None, dispatch_ms=0.9 if timed else None,
                            all_sparse_ms=0.95 if timed else None, note=None)}
    validity = [r.to_dict() for r in check_layers(Tiny())]
    report = build_report(dict(title='t'), validity, layers, e2e, 'tol',
                          None if timed else 'no GPU')
    paths = write_all(report, str(tmp_path))
    data = json.loads(open(paths['json']).read())
    assert tuple(data) == ('meta', 'timings_available', 'timing_unavailable_reason', 'tolerance',
                           'validity', 'layers', 'end_to_end', 'summary')
    assert data['timings_available'] is timed
    assert data['timing_unavailable_reason'] == (None if timed else 'no GPU')
    assert set(data['layers'][0]) >= {'name', 'calls', 'dense_ms', 'sparse_ms', 'im2col_ms',
                                      'speedup', 'dispatch', 'numerics'}
    assert set(data['validity'][0]) == {'name', 'kind', 'weight_shape', 'in_scope', 'candidate',
                                        'valid', 'density', 'status'}
    if not timed:
        assert all(lay['dense_ms'] is None and lay['sparse_ms'] is None for lay in data['layers'])
        assert data['summary']['num_faster_sparse'] is None
    else:
        assert data['summary']['num_faster_sparse'] == 1
    with open(paths['csv']) as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2
    assert (rows[0]['dense_ms'] == '') is (not timed)
    with open(paths['png'], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    table = format_layer_table(layers)
    assert 'l1' in table and ('1.33' in table) is timed
    assert 'backbone' in format_e2e_table(e2e)


def test_records_decide_which_layers_are_kernel_candidates():
    """With a checkpoint's records, a 2:4 layer is a candidate, a 1:8 one is not (the kernels
    run 2:4 only) and a layer without a record is not either, each with the reason."""
    from spre_mmdet.benchmark.layers import check_layers
    from spre_mmdet.sparsity import (refresh_masks, reparameterize, sparse_layer_records,
                                     sparsify_layer)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, bias=False),
                              torch.nn.Conv2d(8, 8, 1, bias=False),
                              torch.nn.Conv2d(8, 8, 1, bias=False))
    sparsify_layer(net, '0', 'srste', 2, 4)
    sparsify_layer(net, '1', 'srste', 1, 8)
    refresh_masks(net, 0)
    records = sparse_layer_records(net)
    rows = {r.name: r for r in check_layers(reparameterize(net.eval()), records=records)}
    assert rows['0'].candidate and rows['0'].valid
    assert not rows['1'].candidate and 'trained 1:8' in rows['1'].status
    assert not rows['2'].candidate and 'not trained sparse' in rows['2'].status


def test_interspace_deploy_conv_is_checked_as_its_gemm():
    """An interspace deploy conv is one row of the sparsity report and, for the kernels, its
    1x1 GEMM (the module the benchmark swaps), checked as the records say; the basis conv is
    no row of its own."""
    from spre_mmdet.benchmark.layers import check_layers
    from spre_mmdet.sparsity import (refresh_masks, reparameterize, sparse_layer_records,
                                     sparsify_layer)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, bias=False))
    sparsify_layer(net, '0', 'srste', 2, 4, interspace=dict())
    refresh_masks(net, 0)
    records = sparse_layer_records(net)
    deployed = reparameterize(net.eval())
    rows = check_layers(deployed, ['0'], records=records)
    assert [(r.name, r.kind, r.candidate, r.valid, r.in_scope) for r in rows] == [
        ('0.gemm', 'conv1x1', True, True, True)]
    assert '2:4 valid' in rows[0].status
