"""The prune stage: structured pruning of a fine-tuned encoder's attention heads and FFN neurons, ranked by the
Fisher information of head and neuron masks (Michel et al. 2019; Kwon et al. 2022), down to a fraction of its
encoder FLOPs.

`masks` measures each unit's importance; `flops` counts what it costs; `selection` picks what stays; `run` is the
stage itself (`sst2dist prune`), `options` its flags. Removing the units and loading a pruned folder again is the
core's `sst2dist.pruned`, since every stage reads pruned models.
"""
