"""Dense vs 2:4 sparse tensor-core speed of a (deploy) detector, per layer and end to end.

    python tools/benchmark_sparse.py CONFIG CHECKPOINT [--input-size 800 1333] [--batch-size 1]
        [--dtype fp16|bf16] [--backend auto|cusparselt|cutlass]
        [--scope backbone|backbone+neck|detector] [--warmup 10] [--repeats 50]
        [--out-dir work_dirs/benchmark] [--device cuda|cpu]

The work is in :mod:`spre_mmdet.benchmark.sparse_tool`; see docs/benchmark.md.
"""
from spre_mmdet.benchmark.sparse_tool import main
from spre_mmdet.cli import run_tool

if __name__ == '__main__':
    run_tool(main)
