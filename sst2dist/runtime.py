"""Run an exported bundle on CPU: loading a classifier, cleaning its input text, batched inference; no torch.

Only onnxruntime, tokenizers and numpy (and the standard library) are imported here, so the base install
(`pip install sst2dist`, without the train extra) can load a bundle, predict, bench and serve; OpenVINO only for
its variants, where it is installed (`engines`).

    >>> clf = Classifier("export/minilm")            # the fastest gated variant on this CPU (variant_choice)
    >>> clf.predict(["a gripping, funny film"])
    [{'label': 'positive', 'score': 0.98}]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from sst2dist.engines import (
    VARIANTS,
    compiled_cache_key,
    missing_engine,
    open_session,
    thread_count,
    unavailable_reason,
    variant_files,
)
from sst2dist.variant_choice import LATENCY, VariantChoice, candidates, choose_variant, explicit, softmax

VARIANT_FILES = {name: spec.file for name, spec in VARIANTS.items()}  # OpenVINO's variants read model.onnx
MANIFEST_FILE = "manifest.json"
SUPPORT_FILES = ("config.json", "tokenizer.json")  # read beside the variant's model file by every Classifier
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class BundleError(ValueError):
    """The folder is not a usable sst2dist bundle, or the requested variant is not in it."""


def read_manifest(bundle_dir: str | Path) -> dict:
    path = Path(bundle_dir) / MANIFEST_FILE
    if not Path(bundle_dir).is_dir():
        raise BundleError(f"bundle folder {bundle_dir} does not exist: create one with `sst2dist export-onnx`")
    if not path.is_file():
        raise BundleError(f"{bundle_dir} has no {MANIFEST_FILE}: it is not a bundle from `sst2dist export-onnx`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path} is unreadable ({err}): export the bundle again") from err


def recorded_sha256(manifest: dict, name: str) -> str | None:
    """The sha256 manifest.json records for bundle file `name`: a variant's model file, or a support file."""
    for entry in manifest.get("variants", {}).values():
        if isinstance(entry, dict) and entry.get("file") == name:
            return entry.get("sha256")
        if isinstance(entry, dict) and (entry.get("weights") or {}).get("file") == name:  # an OpenVINO IR's .bin
            return entry["weights"].get("sha256")
    return manifest.get("files", {}).get(name, {}).get("sha256")


def check_sha256(path: Path, actual: str, expected: str | None) -> None:
    if expected is not None and actual != expected:
        raise BundleError(
            f"{path} is corrupt: its sha256 is {actual}, but manifest.json records {expected}; "
            "export the bundle again with `sst2dist export-onnx`"
        )


def read_verified(bundle_dir: Path, manifest: dict, name: str) -> bytes:
    """The bytes of bundle file `name`, read once and checked against `manifest`'s sha256: what is loaded is what
    was hashed, even if an export replaces the folder meanwhile (the caller never reads the path again)."""
    path = bundle_dir / name
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BundleError(f"{path} is missing or unreadable ({err.strerror}): export the bundle again") from err
    check_sha256(path, hashlib.sha256(data).hexdigest(), recorded_sha256(manifest, name))
    return data


@dataclass(frozen=True)
class BundleFiles:
    """One reading of a bundle: its manifest and the verified bytes of its support files. Every model file read
    later is checked against this manifest, so a Classifier never mixes files of two exports."""

    folder: Path
    manifest: dict
    support: dict[str, bytes]

    @classmethod
    def read(cls, bundle_dir: str | Path) -> BundleFiles:
        folder = Path(bundle_dir)
        manifest = read_manifest(folder)
        return cls(folder, manifest, {name: read_verified(folder, manifest, name) for name in SUPPORT_FILES})

    def variant_bytes(self, variant: str) -> tuple[bytes, bytes | None]:
        """`variant`'s graph, and an OpenVINO IR's weights (else None), each checked against this manifest."""
        graph, *weights = (read_verified(self.folder, self.manifest, name) for name in variant_files(variant))
        return graph, (weights[0] if weights else None)


def limit_tokenizer_threads(threads: int | None) -> None:
    """Bound the tokenizer's encode_batch pool (Rayon, started at its first parallel call and sized once by
    RAYON_NUM_THREADS, else by the machine) to `threads`, or the usable CPUs; a RAYON_NUM_THREADS already set
    wins."""
    os.environ.setdefault("RAYON_NUM_THREADS", str(thread_count(threads)))


class Classifier:
    """A text classifier backed by one variant of a bundle written by `sst2dist export-onnx`.

    Without `variant`, the fastest variant that passed the export gate on this CPU (see `variant_choice`): by the
    bundle's recorded timings when they were taken on this CPU, else re-timed here. `batch_invariant` leaves out
    the variants whose scores move with their batch mates (as measured at export). `self.choice` says which and
    why. Every file is read once, checked against the manifest's sha256, and loaded from those bytes."""

    def __init__(
        self,
        bundle_dir: str | Path,
        variant: str | None = None,
        threads: int | None = None,
        *,
        batch_invariant: bool = False,
        workload: str = LATENCY,
        files: BundleFiles | None = None,
    ):
        thread_count(threads)  # a bad thread count fails here, before anything is read
        files = files or BundleFiles.read(bundle_dir)
        self.bundle_dir, self.manifest = files.folder, files.manifest
        self.labels = self._read_labels(files.support.get("config.json"))
        self.max_length = int(self.manifest["max_length"])
        self.choice, timed = self._choose(files, variant, threads, batch_invariant, workload)
        self.variant = self.choice.variant
        self._check_variant()
        if self.variant in timed:  # loaded (and verified) to re-time it: the same bytes and threads
            self.session = timed[self.variant].session
        else:
            key = compiled_cache_key(self.manifest["variants"][self.variant])
            model, weights = files.variant_bytes(self.variant)
            self.session = open_session(model, self.variant, threads, cache_key=key, weights=weights)
        self.input_names = self.session.input_names
        limit_tokenizer_threads(threads)
        self._tokenizer = self._load_tokenizer(files.support.get("tokenizer.json"))
        self._untruncated = Tokenizer.from_str(self._tokenizer.to_str())
        self._untruncated.no_truncation()
        self._untruncated.no_padding()

    def _choose(
        self, files: BundleFiles, variant: str | None, threads: int | None, batch_invariant: bool, workload: str
    ) -> tuple[VariantChoice, dict[str, Classifier]]:
        if variant:
            return explicit(variant), {}
        if not candidates(self.manifest, batch_invariant):
            raise BundleError("no variant in this bundle passed the export verification gate: export it again")

        def load(name: str) -> Classifier:
            return Classifier(self.bundle_dir, variant=name, threads=threads, files=files)

        return choose_variant(self.manifest, threads, batch_invariant=batch_invariant, load=load, workload=workload)

    def _check_variant(self) -> None:
        if self.variant not in VARIANT_FILES:
            known = ", ".join(VARIANT_FILES)
            raise BundleError(f"unknown variant {self.variant!r}: choose one of {known}")
        entry = self.manifest.get("variants", {}).get(self.variant)
        if entry is None or not (self.bundle_dir / VARIANT_FILES[self.variant]).is_file():
            present = ", ".join(self.manifest.get("variants", {})) or "none"
            raise BundleError(f"variant {self.variant!r} is not in {self.bundle_dir} (it has: {present})")
        lost = [name for name in variant_files(self.variant) if not (self.bundle_dir / name).is_file()]
        if lost:  # an IR whose .bin went missing: OpenVINO would fail with its own traceback
            raise BundleError(f"{self.bundle_dir / lost[0]} is missing: export the bundle again")
        if missing_engine(self.variant):
            raise BundleError(f"variant {self.variant!r} cannot run here: {missing_engine(self.variant)}")
        if unavailable_reason(self.variant):
            warnings.warn(f"variant {self.variant!r}: {unavailable_reason(self.variant)}", stacklevel=3)
        if entry.get("passed") is False:
            warnings.warn(
                f"variant {self.variant!r} failed the export verification gate; see manifest.json",
                stacklevel=3,
            )

    def _read_labels(self, config: bytes | None) -> list[str]:
        try:
            id2label = json.loads(config.decode("utf-8"))["id2label"]
            return [id2label[str(i)] for i in range(len(id2label))]
        except (AttributeError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{self.bundle_dir}/config.json has no readable id2label ({err})") from err

    def _load_tokenizer(self, data: bytes | None) -> Tokenizer:
        path = self.bundle_dir / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as err:  # tokenizers raises a bare Exception on bad files
            raise BundleError(f"{path} is missing or unreadable ({err}): export the bundle again") from err
        # tokenizer.json may carry a fixed padding/truncation (MiniLM's says 128); transformers ignores it
        # and truncates at model_max_length, so do the same: pad to the longest member, cut at max_length.
        special = self.manifest.get("pad_token", "[PAD]")
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id(special) or 0, pad_token=special)
        tokenizer.enable_truncation(max_length=self.max_length)
        return tokenizer

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text including special tokens, before truncation."""
        return [len(e.ids) for e in self._untruncated.encode_batch(_check_texts(texts))]

    def encode(self, texts: Sequence[str], truncate: bool = True) -> dict[str, np.ndarray]:
        """Model inputs (int64, padded to the longest member), named as the ONNX graph expects them."""
        texts = _check_texts(texts)
        if not truncate:
            for index, count in enumerate(self.token_counts(texts)):
                if count > self.max_length:
                    raise ValueError(f"text {index} has {count} tokens, over the model's maximum of {self.max_length}")
        encodings = self._tokenizer.encode_batch(texts)
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        if not texts:
            arrays = {name: np.zeros((0, 0), dtype=np.int64) for name in arrays}
        return {name: arrays[name] for name in self.input_names}

    def run(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        """Logits [batch, n_labels] for one encoded batch."""
        if len(next(iter(encoded.values()))) == 0:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.session.run(encoded)

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits [n_texts, n_labels] in the order of `texts`.

        Past one batch, the texts run sorted by token length, so that each batch holds texts of similar length
        and pads little; the rows are put back in the caller's order."""
        texts = _check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(texts) <= batch_size:
            return self.run(self.encode(texts))
        lengths = [min(count, self.max_length) for count in self.token_counts(texts)]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        logits = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = order[start : start + batch_size]
            logits[batch] = self.run(self.encode([texts[i] for i in batch]))
        return logits

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Every label's probability, [n_texts, n_labels]; column i is `self.labels[i]`."""
        return softmax(self.logits(texts, batch_size))

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[dict]:
        """The most likely label and its probability per text: [{"label": "positive", "score": 0.98}, ...]."""
        probabilities = self.predict_proba(texts, batch_size)
        best = probabilities.argmax(axis=-1)
        return [{"label": self.labels[i], "score": float(p[i])} for i, p in zip(best, probabilities, strict=True)]


def load_classifier(
    bundle_dir: str | Path, variant: str | None = None, threads: int | None = None, workload: str = LATENCY
) -> Classifier:
    """What `serve` and `predict` run: the bundle's classifier, by default in the fastest gated variant on this CPU
    whose scores do not depend on the batch (fastest at batch 1, or in sorted batches for the THROUGHPUT
    workload), or a BundleError saying what is wrong with the bundle."""
    try:
        return Classifier(bundle_dir, variant=variant, threads=threads, batch_invariant=True, workload=workload)
    except BundleError:
        raise
    except ValueError as err:
        raise BundleError(str(err)) from err
    except Exception as err:  # onnxruntime raises its own classes for a corrupt model file
        raise BundleError(
            f"could not load {bundle_dir} ({type(err).__name__}: {str(err)[:300]}): the bundle looks corrupt; "
            "export it again with `sst2dist export-onnx`"
        ) from err


def clean_text(text: str) -> str:
    """Lone UTF-16 surrogates (JSON "\\ud800", undecodable argv bytes) become U+FFFD; tokenizers rejects them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return LONE_SURROGATE.sub("\ufffd", text)
    return text


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings")
    return list(texts)
