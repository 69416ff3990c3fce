"""Fingerprint the first iterations of a training run, or compare two such traces, to find
where two environments diverge. The work is in :mod:`spre_mmdet.tracing`.

    python tools/trace_run.py CONFIG --iters 10 --out trace.json [--cfg-options ...]
    python tools/trace_run.py --compare A.json B.json
"""
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from spre_mmdet.tracing import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
