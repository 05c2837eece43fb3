"""Distil: a teacher in, what a student learns from out.

`scoring` scores sentences with a teacher (PyTorch model folder or ONNX bundle) in shards that survive a kill;
`teacher` caches those logits for a training split, keyed by teacher and data hashes (`logits`: the file format;
the logits shipped in `teachers/` replace that work); `loss` holds what the training loop adds (logit, hidden-state
and attention distillation) and `intermediate` the teacher run beside the student for the layer losses; `augment`
makes teacher-labelled sentences (TinyBERT's word swaps) as a folder `sst2dist.train` reads like SST-2.
"""
