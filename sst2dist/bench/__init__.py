"""Bench: a model folder and/or bundles in, a report out.

`run.run_bench` times every variant against the PyTorch baseline in one run (`measure`), `menu.run_menu` puts several
models' bundles on one accuracy-latency chart, `report` writes JSON, Markdown and PNG; `settings` holds the flags.
`python -m sst2dist.bench cold-start` is the child process that measures a cold start.
"""
