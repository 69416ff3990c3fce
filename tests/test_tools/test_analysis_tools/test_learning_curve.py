"""tools/analysis_tools/learning_curve.py: top-1 per epoch from mmengine's scalars.json."""
import json

import learning_curve


def _run(folder, top1, losses):
    vis = folder / '20260101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    with open(vis / 'scalars.json', 'w') as f:
        for epoch, (acc, loss) in enumerate(zip(top1, losses), 1):
            for it in range(2):
                f.write(json.dumps(dict(loss=loss + it, epoch=epoch, iter=it, step=it)) + '\n')
            f.write(json.dumps({'accuracy/top1': acc, 'step': epoch}) + '\n')
    return str(folder)


def test_curves_table_and_plot(tmp_path):
    a = _run(tmp_path / 'a', [10.0, 30.0, 31.0], [3.0, 2.0, 1.0])
    b = _run(tmp_path / 'b', [12.0, 34.0, 35.0], [3.0, 2.0, 1.0])
    val, loss = learning_curve.read_curve(a)
    assert val == {1: 10.0, 2: 30.0, 3: 31.0} and loss == {1: 3.5, 2: 2.5, 3: 1.5}
    text = learning_curve.table({'a': val, 'b': learning_curve.read_curve(b)[0]})
    assert '| 2 | 30.00 | 34.00 | 32.00 | +21.00 |' in text
    assert '| 3 | 31.00 | 35.00 | 33.00 | +1.00 |' in text
    out = tmp_path / 'curve.png'
    learning_curve.main([a, b, '--labels', 'a', 'b', '--out', str(out)])
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
