"""The `sst2dist` command line: thin Click wrappers, each parses options and calls one library function.

Stage modules are imported inside each command so that `serve` and `predict` never import torch.
"""

from __future__ import annotations

import click

from sst2dist import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sst2dist")
def main() -> None:
    """Fine-tune BERT-family models on SST-2, export verified ONNX bundles, benchmark and serve them on CPU.

    \b
    Example, the whole chain on the real data:
      accelerate launch -m sst2dist.train --data ../shared/data/sst2 --output-dir runs/minilm
      sst2dist export-onnx runs/minilm/model --output export/minilm --data ../shared/data/sst2
      sst2dist bench --model runs/minilm/model --bundle export/minilm --data ../shared/data/sst2
      sst2dist serve export/minilm
    """


# --- train (owner: train helper) ---

# --- export-onnx (owner: export helper) ---

# --- bench (owner: bench helper) ---

# --- serve / predict (owner: serve helper) ---


if __name__ == "__main__":
    main()
