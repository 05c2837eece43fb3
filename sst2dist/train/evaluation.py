"""Evaluation during training: the validation loader, the accuracy over every row, and keeping the best model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sst2dist.train.run_folder import save_model

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from datasets import Dataset
    from torch.utils.data import DataLoader

    from sst2dist.train.config import TrainConfig
    from sst2dist.train.state import Run, TrainState


def make_eval_loader(config: TrainConfig, eval_set: Dataset, pad_token_id: int) -> DataLoader:
    from torch.utils.data import DataLoader

    from sst2dist.data import make_collator

    collate = make_collator(pad_token_id, config.pad_to_multiple_of)
    return DataLoader(eval_set, batch_size=config.eval_batch_size, collate_fn=collate)


def evaluate(model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, metric: Any) -> tuple[float, int]:
    """Accuracy over the whole validation split; gather_for_metrics drops the samples repeated to even out
    the processes' shards, so every row counts exactly once."""
    import torch

    model.eval()
    counted = 0
    for batch in loader:
        with torch.no_grad():
            logits = model(**batch).logits
        predictions, references = accelerator.gather_for_metrics((logits.argmax(dim=-1), batch["labels"]))
        metric.add_batch(predictions=predictions, references=references)
        counted += len(references)
    model.train()
    return metric.compute()["accuracy"], counted


def evaluate_and_keep_best(run: Run, state: TrainState) -> bool:
    """Evaluate; save the model when it is the best so far; True when early stopping says stop."""
    accuracy, run.eval_samples = evaluate(run.model, run.eval_loader, run.accelerator, run.metric)
    run.final_accuracy, run.last_eval_step = accuracy, state.step
    if accuracy > state.best_accuracy:
        state.best_accuracy, state.best_step, state.evals_without_improvement = accuracy, state.step, 0
        save_model(run.accelerator, run.model, run.tokenizer, run.output_dir / "model")
    else:
        state.evals_without_improvement += 1
    record = {"step": state.step, "eval_accuracy": accuracy, "eval_samples": run.eval_samples}
    run.log.write(record | {"best_accuracy": state.best_accuracy})
    if run.progress is not None:
        run.progress.set_postfix(acc=f"{accuracy:.4f}", best=f"{state.best_accuracy:.4f}")
    return stopped_early(run.config, state)


def stopped_early(config: TrainConfig, state: TrainState) -> bool:
    """Early stopping says stop (also true of a finished run's last checkpoint, so --resume trains no further)."""
    patience = config.early_stopping_patience
    return bool(patience) and state.evals_without_improvement >= patience
