"""Predict: a bundle and sentences (a file or stdin) in, labels and scores out (text, JSONL, CSV or TSV).

`run.run_predict` reads, classifies through `sst2dist.runtime.Classifier` in length-sorted batches and writes the
output atomically; `options` holds the flags (standard library only, so the command line loads without onnxruntime).
"""
