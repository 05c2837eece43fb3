"""The prune stage: structured pruning of a fine-tuned encoder's attention heads and FFN neurons, ranked by the
Fisher information of head and neuron masks (Michel et al. 2019; Kwon et al. 2022), down to a fraction of its
encoder FLOPs.

`architecture` says where the prunable parts of each handled model type live; `masks` measures their importance;
`flops` counts what they cost; `shapes` removes them and rebuilds a pruned model's shapes when it is loaded again
(`sst2dist.modeling.load_model` calls it); `run` is the stage itself (`sst2dist prune`).
"""
