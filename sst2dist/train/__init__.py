"""Train: SST-2 (or an augmented folder) and a base model in, a fine-tuned or distilled model folder out.

`accelerate launch -m sst2dist.train` / `python -m sst2dist.train` run `loop.main`. Takes a `TrainConfig` (`config`),
optionally teacher logits (`sst2dist.distill`); gives `OUTPUT_DIR/model` (the best evaluation), checkpoints to
resume from (`checkpoint`), `metrics.json` and `train_config.json` (`run_folder`). `budget` plans --time-budget,
`launch` starts N processes through torchrun, `evaluation`, `log` and `state` serve the loop.
"""
