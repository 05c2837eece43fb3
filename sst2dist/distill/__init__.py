"""Distil: a teacher in, what a student learns from out.

`teacher` scores the training sentences once (cached, keyed by teacher and data hashes; the logits shipped in
`teachers/` replace that work) and holds the distillation loss the training loop adds; `augment` makes
teacher-labelled sentences (TinyBERT's word swaps) as a folder `sst2dist.train` reads like SST-2.
"""
