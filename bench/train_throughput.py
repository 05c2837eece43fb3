"""Training throughput on this machine, side by side in one run on the same model and data:

  seed-trainer  the seed recipe: HF `Trainer`, padding="max_length" (512), batch 8, fp32
  plain-loop    a plain PyTorch loop: shuffled, tokenized per batch, padded to the longest, batch 32, fp32
  sst2dist      `python -m sst2dist.train` with its defaults (length-grouped, bf16 on AMX, fused AdamW ...)

Each case runs in its own process (Trainer and Accelerate keep global state). Reports samples/s, real tokens/s,
and the share of the CPU's peak: FLOPs ~= 6 x parameters x processed (padded) tokens, against the fp32 and bf16
peaks of the cores as `sst2dist.environment` derives them from this CPU's instruction set and clock (AVX2 or
AVX-512 FMA for fp32; AMX or AVX-512 BF16 for bf16), or "unknown" where it cannot.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_throughput.py --data ../shared/data/sst2           # full
    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_throughput.py --data ../shared/data/sst2 --quick   # smoke

Writes bench/results/train_throughput.json and .md (or --output DIR). Run the full one on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sst2dist.environment import cpu_info, peak_gops

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = ("seed-trainer", "plain-loop", "sst2dist")
# (warmup steps, timed steps) per case: full / --quick
STEPS = {
    "seed-trainer": ((2, 8), (1, 2)),
    "plain-loop": ((3, 40), (1, 3)),
    "sst2dist": ((0, 300), (0, 10)),
}
PRECISIONS = ("fp32", "bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--model", default="packaged:all-MiniLM-L6-v2")
    parser.add_argument("--quick", action="store_true", help="a few steps per case (a smoke run, ~1 minute)")
    parser.add_argument("--output", default=str(REPO_ROOT / "bench" / "results"), help="folder for the results")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    return parser.parse_args(argv)


def steps_for(case: str, quick: bool) -> tuple[int, int]:
    return STEPS[case][1 if quick else 0]


def count_parameters(model_name: str) -> int:
    from sst2dist.modeling import load_model

    # Embedding lookups are gathers, not matmuls: only the other weights cost 6 FLOPs per token in training.
    return sum(p.numel() for name, p in load_model(model_name).named_parameters() if "embeddings" not in name)


class StepTimer:
    """Seconds of the timed steps (after `warmup` untimed ones)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.step, self.seconds, self.started = warmup, 0, 0.0, 0.0

    def begin(self) -> None:
        self.started = time.perf_counter()

    def end(self) -> bool:
        self.step += 1
        if self.step > self.warmup:
            self.seconds += time.perf_counter() - self.started
            return True
        return False


def seed_trainer(args: argparse.Namespace) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from sst2dist.data import load_sst2
    from sst2dist.modeling import load_model, load_tokenizer

    warmup, timed = steps_for("seed-trainer", args.quick)
    batch_size, max_length = 8, 512
    tokenizer = load_tokenizer(args.model)
    train = load_sst2(args.data, max_train_samples=batch_size * (warmup + timed))["train"]
    encoded = train.map(
        lambda b: tokenizer(b["sentence"], padding="max_length", truncation=True, max_length=max_length),
        batched=True,
    )
    real_tokens_per_sample = sum(sum(mask) for mask in encoded["attention_mask"]) / len(encoded)
    timer = StepTimer(warmup)

    class Timing(TrainerCallback):
        def on_step_begin(self, *args, **kwargs) -> None:
            timer.begin()

        def on_step_end(self, *args, **kwargs) -> None:
            timer.end()

    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch_size,
            max_steps=warmup + timed,
            learning_rate=2e-5,
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        torch.manual_seed(0)
        Trainer(model=load_model(args.model), args=training_args, train_dataset=encoded, callbacks=[Timing()]).train()
    samples = timed * batch_size
    return result(
        "seed-trainer",
        "HF Trainer, padding=max_length 512, batch 8, fp32",
        samples,
        samples * real_tokens_per_sample,
        samples * max_length,
        timer.seconds,
        timed,
    )


def plain_loop(args: argparse.Namespace) -> dict:
    import random

    import torch

    from sst2dist.data import load_sst2
    from sst2dist.modeling import load_model, load_tokenizer

    warmup, timed = steps_for("plain-loop", args.quick)
    batch_size = 32
    tokenizer = load_tokenizer(args.model)
    sentences = load_sst2(args.data)["train"].shuffle(seed=0).select(range(batch_size * (warmup + timed)))
    torch.manual_seed(0)
    model = load_model(args.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    timer, samples, tokens, padded = StepTimer(warmup), 0, 0, 0
    order = list(range(len(sentences)))
    random.Random(0).shuffle(order)
    for start in range(0, len(order), batch_size):
        rows = sentences[order[start : start + batch_size]]
        timer.begin()
        batch = tokenizer(rows["sentence"], padding=True, truncation=True, max_length=128, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(rows["label"])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if timer.end():
            mask = batch["attention_mask"]
            samples, tokens, padded = samples + len(mask), tokens + int(mask.sum()), padded + mask.numel()
    return result(
        "plain-loop", "shuffled, dynamic padding, batch 32, fp32", samples, tokens, padded, timer.seconds, timed
    )


def sst2dist_loop(args: argparse.Namespace) -> dict:
    _, timed = steps_for("sst2dist", args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "sst2dist.train", "--data", args.data, "--model", args.model]
        command += ["--output-dir", tmp, "--max-steps", str(timed), "--eval-every", "0", "--save-every", "0"]
        command += ["--max-eval-samples", "32", "--overwrite"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
        config = json.loads((Path(tmp) / "train_config.json").read_text())
    description = (
        f"sst2dist defaults: length-grouped, batch {config['batch_size']}, "
        f"{config['resolved_mixed_precision']}, fused AdamW (first steps included)"
    )
    return result(
        "sst2dist",
        description,
        metrics["train_samples_seen"],
        metrics["train_tokens_seen"],
        metrics["train_padded_tokens_seen"],
        metrics["train_seconds"],
        timed,
    )


def result(
    case: str, description: str, samples: float, tokens: float, padded: float, seconds: float, steps: int
) -> dict:
    return {
        "case": case,
        "description": description,
        "timed_steps": steps,
        "samples": samples,
        "seconds": round(seconds, 3),
        "samples_per_second": round(samples / seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        "padded_tokens_per_second": round(padded / seconds, 1),
    }


def machine() -> dict:
    """This CPU and its peak TFLOP/s per precision ({} where its instruction set gives no known peak)."""
    cpu = cpu_info()
    cores = cpu["usable_cpus"]
    return {
        "name": cpu["model"],
        "kind": cpu["kind"],
        "cores": cores,
        "mhz": cpu["peak_clock_mhz"],
        "clock_source": cpu["peak_clock_source"],
        "peak_tflops": {p: {isa: round(g / 1e3, 3) for isa, g in peak_gops(p, cores).items()} for p in PRECISIONS},
    }


def add_flops(rows: list[dict], parameters: int, cpu: dict) -> None:
    for row in rows:
        tflops = 6 * parameters * row["padded_tokens_per_second"] / 1e12
        row["achieved_tflops"] = round(tflops, 4)
        for precision in PRECISIONS:
            peak = next(iter(cpu["peak_tflops"][precision].values()), None)
            row[f"pct_of_{precision}_peak"] = round(100 * tflops / peak, 2) if peak else None


def percent(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "unknown"


def peak_sentence(cpu: dict) -> str:
    peaks = [f"{label} {tflops} TFLOP/s" for p in PRECISIONS for label, tflops in cpu["peak_tflops"][p].items()]
    known = "; ".join(peaks) or "unknown for this instruction set"
    clock = f" at {cpu['mhz']:.0f} MHz ({cpu['clock_source']})" if cpu["mhz"] else " (clock unknown)"
    return f"Peaks on {cpu['cores']} cores{clock}: {known}."


def markdown(report: dict) -> str:
    cpu = report["cpu"]
    lines = [
        "# Training throughput",
        "",
        f"`{report['command']}` on {cpu['name']} [{cpu['kind']}] ({cpu['cores']} cores), "
        f"model `{report['model']}` ({report['parameters'] / 1e6:.1f}M non-embedding parameters), {report['date']}.",
        f"Load average before/after: {report['load_before']} / {report['load_after']}"
        + (" (busy machine: numbers are low and noisy)" if report["busy"] else "")
        + ("; **quick smoke run**" if report["quick"] else "")
        + ".",
        "",
        "| case | what | samples/s | tokens/s | padded tokens/s | TFLOP/s | % bf16 peak | % fp32 peak | vs seed |"
        " vs plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_case = {row["case"]: row for row in report["results"]}
    for row in report["results"]:
        ratios = []
        for base in ("seed-trainer", "plain-loop"):
            ratio = row["samples_per_second"] / by_case[base]["samples_per_second"] if base in by_case else None
            ratios.append(f"{ratio:.1f}x" if ratio else "-")
        lines.append(
            f"| {row['case']} | {row['description']} | {row['samples_per_second']:.1f} | "
            f"{row['tokens_per_second']:.0f} | {row['padded_tokens_per_second']:.0f} | {row['achieved_tflops']:.3f} | "
            f"{percent(row['pct_of_bf16_peak'])} | {percent(row['pct_of_fp32_peak'])} | {ratios[0]} | {ratios[1]} |"
        )
    lines += [
        "",
        f"FLOPs ~= 6 x non-embedding parameters x padded tokens (forward + backward; attention score matmuls left "
        f"out, so this understates the work a little, most at length 512). {peak_sentence(cpu)} "
        "Tokens/s counts real (unpadded) tokens.",
        "",
    ]
    return "\n".join(lines)


def run_case(case: str, args: argparse.Namespace) -> dict:
    return {"seed-trainer": seed_trainer, "plain-loop": plain_loop, "sst2dist": sst2dist_loop}[case](args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return 0
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        sys.exit(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}")
    load_before = round(os.getloadavg()[0], 2)
    rows = []
    for case in cases:
        print(f"running {case} ...", file=sys.stderr, flush=True)
        own = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--cases")]
        done = subprocess.run(
            [sys.executable, __file__, *own, "--case", case], check=True, capture_output=True, text=True
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    cpu = machine()
    parameters = count_parameters(args.model)
    add_flops(rows, parameters, cpu)
    load_after = round(os.getloadavg()[0], 2)
    report = {
        "command": "python bench/train_throughput.py" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": args.model,
        "parameters": parameters,
        "quick": args.quick,
        "cpu": cpu,
        "load_before": load_before,
        "load_after": load_after,
        "busy": max(load_before, load_after) > cpu["cores"] * 0.75,
        "results": rows,
    }
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "train_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "train_throughput.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
