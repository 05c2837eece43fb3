"""sst2dist: SST-2 fine-tuning with Accelerate, verified ONNX export, benchmarks and CPU serving.

The stages, in the order data flows: `train` -> `distill` (teacher logits, augmentation; the loop uses them) ->
`export` -> `bench`, `serve`, `predict`. Each stage uses the shared core beside them, never the reverse:
`config_fields` (the option pattern), `data`, `environment`, `atomic` (temp path, then rename), `modeling` and
`packaged` (model resolution), `runtime` (`Classifier`, the bundle at inference) and `variant_choice`.
`cli` is the `sst2dist` command: thin Click commands over the stages.
"""

__version__ = "0.1.0"
