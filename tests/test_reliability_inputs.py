"""Issue 14, classes 9 and 10: a resumed run's log is exact; bad assets are caught before anything is written.

Class 9 kills real ``lsbench train`` processes (SIGKILL, like a scheduler's) — one after its first
checkpoint, one before — resumes them through the CLI and through a study's executor, and compares
``log.jsonl`` with an uninterrupted run of the same config, record by record (training on CPU is
bit-identical here, see tests/test_train.py; only ``epoch_seconds`` differs).  Class 10 feeds the
generators damaged inputs whose headers look right: HDRIs with a garbage or black body, ImageNet
photos that are truncated, garbled or huge (a 30000x30000 PNG header, a 100-megapixel one), GSO
textures with a garbage body, MNIST idx files with a zeroed body or a header promising gigabytes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LSBENCH, TINY_CLI, assert_user_error, generate_mnist, subprocess_env, write_fake_mnist, write_idx

from lsbench.benchmark.train import TrainConfig, train
from lsbench.errors import ConfigError, DataError

# --------------------------------------------------------------------------- class 9: resume keeps logs exact

# beit_base at micro size is the smallest model (0.40 M parameters); 48 train images in batches of 4 are
# 12 steps an epoch (~0.3 s each here), long enough to kill a process inside an epoch.
TRAIN_OPTS = dict(model="beit_base", size="micro", img_size=32, epochs=3, batch_size=4, lr=1e-3, workers=0,
                  val_limit=8, log_every=1)


def _cli_args(data: Path, out: Path) -> list[str]:
    args = ["train", "--data", str(data), "--out", str(out)]
    for key, value in TRAIN_OPTS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in records]


def _state(run: Path) -> tuple[int, bool]:
    """(epoch records, whether the last complete line is a step record) of a running run's log."""
    try:
        lines = (run / "log.jsonl").read_text().splitlines()
    except OSError:
        return 0, False
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    epochs = sum(r.get("event") == "epoch" for r in records)
    return epochs, bool(records) and "event" not in records[-1]


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mnist") / "ds"
    assert generate_mnist(out, digits=1, size=32, scale_range=(0.6, 1.1), train=48, test=8, variants=1,
                          shard_size=16).complete
    return out


@pytest.fixture(scope="module")
def reference(tiny_mnist, tmp_path_factory) -> list[dict]:
    """The log of the uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed processes and the resumed runs (the autouse fixture comes later)
    try:
        train(TrainConfig(data=str(tiny_mnist), out=str(out), **TRAIN_OPTS))
    finally:
        torch.set_num_threads(before)
    return _comparable(_records(out))


@pytest.fixture(scope="module")
def killed(tiny_mnist, tmp_path_factory) -> dict[str, Path]:
    """Two real ``lsbench train`` processes, SIGKILLed: ``after`` once it logs a step after its first
    checkpoint, ``before`` while it logs its first epoch (no ``last.pt`` yet).  Run side by side."""
    root = tmp_path_factory.mktemp("killed")
    env = subprocess_env() | {"OMP_NUM_THREADS": "1"}  # single-threaded, as this process (bit-identical losses)
    runs = {"after": root / "after", "before": root / "before"}
    procs = {name: subprocess.Popen([LSBENCH, *_cli_args(tiny_mnist, out), "-q"], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for name, out in runs.items()}
    wanted = {"after": lambda e, step: e >= 1 and step, "before": lambda e, step: e == 0 and step}
    started = time.monotonic()
    deadline = started + 240
    try:
        while any(p.returncode is None for p in procs.values()) and time.monotonic() < deadline:
            for name, p in procs.items():
                if p.returncode is None and (p.poll() is None) and wanted[name](*_state(runs[name])):
                    p.send_signal(signal.SIGKILL)
                    p.wait()
            time.sleep(0.002)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    print(f"killed both runs after {time.monotonic() - started:.1f} s")
    for name, p in procs.items():
        assert p.returncode == -signal.SIGKILL, (name, p.returncode, p.stderr.read().decode()[-2000:])
    return runs


def _resume_via_cli(cli, data: Path, out: Path):
    return cli(*_cli_args(data, out), "--resume")


def _resume_via_study(data: Path, out: Path, tmp_path: Path) -> None:
    """What a study does for an interrupted run: :func:`lsbench.study.execute.execute` (resume iff last.pt)."""
    from lsbench.study.execute import RunJob, execute

    cfg = TrainConfig(data=str(data), out=str(out), **TRAIN_OPTS)
    job = RunJob(key="run", record={"dataset": {"name": "tiny"}}, train=asdict(cfg), splits=(),
                 results_dir=str(tmp_path / "results"), study={}, eval_batch_size=8, workers=0)
    assert execute(job) == "run"
    assert (out / "done.json").is_file()


@pytest.mark.slow
def test_killed_after_a_checkpoint_resumes_to_the_exact_log(killed, reference, tiny_mnist, cli, tmp_path):
    run = killed["after"]
    done = torch.load(run / "last.pt", weights_only=True)["epoch"]
    before = _records(run)
    assert any(r["epoch"] > done for r in before), "the kill left no records past the checkpoint to drop"
    study_copy = tmp_path / "study-run"
    shutil.copytree(run, study_copy)

    result = _resume_via_cli(cli, tiny_mnist, run)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    got = _comparable(_records(run))
    assert len(got) == len(reference) and got == reference  # same records, in order, once each
    keys = [(r["epoch"], r.get("step"), r.get("event")) for r in got]
    assert len(keys) == len(set(keys))

    _resume_via_study(tiny_mnist, study_copy, tmp_path)
    assert _comparable(_records(study_copy)) == reference


@pytest.mark.slow
def test_killed_before_its_first_checkpoint_restarts_and_says_so(killed, reference, tiny_mnist, cli, tmp_path):
    run = killed["before"]
    assert not (run / "last.pt").exists() and _records(run), "the kill should land inside the first epoch"
    study_copy = tmp_path / "study-run"
    shutil.copytree(run, study_copy)

    result = _resume_via_cli(cli, tiny_mnist, run)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert "has no checkpoint yet (killed before its first epoch ended): training it from the start" in result.stderr
    assert _comparable(_records(run)) == reference

    _resume_via_study(tiny_mnist, study_copy, tmp_path)
    assert _comparable(_records(study_copy)) == reference


def test_resume_of_nothing_is_one_plain_line(cli, tiny_mnist, tmp_path):
    line = assert_user_error(_resume_via_cli(cli, tiny_mnist, tmp_path / "nowhere"),
                             "holds no run to resume", "rerun without --resume")
    assert "pass the .pt file" not in line  # not the checkpoint loader's message for --checkpoint
    assert not (tmp_path / "nowhere").exists()


def test_log_kept_on_resume_is_what_the_checkpoint_covers(tmp_path):
    """The rule itself, on a log with a line cut by the kill: records up to the checkpoint's epoch stay."""
    from lsbench.benchmark.train import _log_until

    log = tmp_path / "log.jsonl"
    lines = [{"epoch": 0, "step": 0}, {"event": "epoch", "epoch": 0}, {"epoch": 1, "step": 0},
             {"event": "epoch", "epoch": 1}, {"epoch": 2, "step": 0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 2, "st')
    assert [json.loads(x) for x in _log_until(log, 1)] == lines[:4]
    assert _log_until(log, None) == [] and _log_until(tmp_path / "absent.jsonl", 3) == []


def test_fresh_start_over_a_killed_runs_log_does_not_append(tiny_mnist, tmp_path):
    """Without --resume (a study's run with no last.pt) the leftover log of a killed first epoch is replaced."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text(json.dumps({"epoch": 0, "step": 0, "loss": 9.0}) + "\n")
    train(TrainConfig(data=str(tiny_mnist), out=str(out), **{**TRAIN_OPTS, "epochs": 1, "max_steps_per_epoch": 2}))
    records = _records(out)
    assert [(r["epoch"], r.get("step", r.get("event"))) for r in records] == [(0, 0), (0, 1), (0, "epoch")]
    assert records[0]["loss"] != 9.0
    with pytest.raises(ConfigError, match="already holds a run"):  # and a finished one still needs --resume
        train(TrainConfig(data=str(tiny_mnist), out=str(out), **TRAIN_OPTS))


# --------------------------------------------------------------------------- class 10: bad assets caught first


def _run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([LSBENCH, *args], env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(done: subprocess.CompletedProcess, *needles: str) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (RGB, 8 bit) with a tiny body: what PIL's size check sees."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(
        b"IEND", b"")


def _photo(seed: int, fmt: str = "JPEG") -> bytes:
    import io

    from PIL import Image

    image = np.random.default_rng(seed).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt)
    return buf.getvalue()


def _train_name(folder: str, stem: str, ext: str) -> str:
    """A file name the ImageFolder hash rule puts in the train split."""
    from lsbench.generators.imagenet.sources import _test_share

    i = 0
    while _test_share(f"{folder}/{stem}{i}.{ext}"):
        i += 1
    return f"{stem}{i}.{ext}"


def _photo_tree(root: Path, photos: dict[str, dict[str, bytes]]) -> dict[str, str]:
    """An ImageFolder of train photos: class → {stem.ext: bytes}; returns {stem: relative id}."""
    ids = {}
    for cls, files in photos.items():
        (root / cls).mkdir(parents=True)
        for name, data in files.items():
            stem, ext = name.rsplit(".", 1)
            real = _train_name(cls, stem, ext)
            (root / cls / real).write_bytes(data)
            ids[stem] = f"{cls}/{real}"
    return ids


def test_imagenet_split_without_usable_photos_stops_before_writing(tmp_path):
    good = _photo(0)
    src = tmp_path / "src"
    ids = _photo_tree(src, {
        "apple": {"huge.png": png_header(30000, 30000), "bomb.png": png_header(10000, 10000)},
        "pear": {"cut.jpg": good[: len(good) // 2], "garbled.png": b"\x89PNG\r\n\x1a\n" + os.urandom(4000)},
    })
    out = tmp_path / "ds"
    done = _run_cli("generate", "imagenet", "--src", str(src), "--out", str(out), "--train", "2", "--test", "0",
                    "--detector", "annotation", "--segmenter", "grabcut", "--inpainter", "opencv",
                    "--max-attempts", "3", "-q")
    line = assert_one_error_line(done, "3 photos in a row were rejected before the build",
                                 "0 of the 4 train source photos checked are usable", "nothing was written",
                                 "replace or remove them, or raise --max-attempts", "2 more")
    assert "…" not in line  # short enough for the CLI to show whole
    assert any(ids[s] in line for s in ids)
    assert not out.exists()


def test_imagenet_probe_names_each_bad_photo_and_a_usable_split_goes_on(tmp_path):
    from lsbench.generators.imagenet import ImagenetConfig, pipeline
    from lsbench.generators.imagenet.sources import PhotoError, SourcePhoto, decode_photo, probe_photo

    good = _photo(1)
    cases = {
        "huge.png": (png_header(30000, 30000), "too large to decode safely"),
        "bomb.png": (png_header(10000, 10000), "10000x10000 px, over the 89-megapixel limit"),
        "cut.jpg": (good[: len(good) // 2], "truncated"),
        "garbled.png": (_photo(2, "PNG")[:200] + os.urandom(3000), "cannot decode"),
        "strip.png": (png_header(4000, 100), "smaller than 32"),
    }
    for name, (data, needle) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(PhotoError, match=needle):
            probe_photo(SourcePhoto(name, str(path), 0, "x"), max_side=512)
        with pytest.raises(PhotoError):  # the build rejects what the probe rejects
            decode_photo(data, max_side=512)
    (tmp_path / "ok.jpg").write_bytes(good)
    probe_photo(SourcePhoto("ok", str(tmp_path / "ok.jpg"), 0, "x"), max_side=512)

    src = tmp_path / "src"
    ids = _photo_tree(src, {"apple": {"ok.jpg": good, "huge.png": png_header(30000, 30000)},
                            "pear": {"fine.jpg": _photo(4)}})
    said: list[str] = []
    cfg = ImagenetConfig(src=src, train=4, test=0, detector="annotation", segmenter="grabcut", inpainter="opencv")
    pipeline.check_sources(cfg, "train", said.append)
    assert len(said) == 1 and "2 of the 3 train source photos checked are usable" in said[0], said
    assert ids["huge"] in said[0] and "too large" in said[0]


def _black_hdr(path: Path, width: int = 64, height: int = 32) -> None:
    """A valid Radiance HDR (flat RGBE scanlines) whose every pixel is black."""
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()
    path.write_bytes(header + bytes(4 * width * height))


def test_gso_hdris_with_a_valid_header_and_a_bad_body_stop_before_writing(tmp_path):
    from lsbench.generators.gso.assets import bpy_studio_lights

    hdri = tmp_path / "hdri"
    hdri.mkdir()
    for name in ("city", "forest", "studio"):
        shutil.copy(bpy_studio_lights() / f"{name}.exr", hdri / f"{name}.exr")
    (hdri / "garbage.hdr").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 256 +X 512\n" + os.urandom(20000))
    exr = (bpy_studio_lights() / "night.exr").read_bytes()
    (hdri / "cut.exr").write_bytes(exr[: len(exr) // 2])
    _black_hdr(hdri / "black.hdr")
    out = tmp_path / "ds"
    done = _run_cli("generate", "gso", "--hdri", str(hdri), "--out", str(out), "--size", "64", "--train", "2",
                    "--test", "6", "--variants", "2", "--samples", "4", "--shard-size", "3", "-q")
    line = assert_one_error_line(done, "3 of the 6 HDRIs are unusable", "nothing was written")
    assert "garbage.hdr: Blender decodes no pixels" in line and "cut.exr: Blender decodes no pixels" in line
    assert "black.hdr: almost black" in line and "…" not in line
    assert not out.exists()


def test_gso_texture_with_a_garbage_body_is_one_line(tmp_path):
    from lsbench.generators.gso import assets

    folder = tmp_path / "gso"
    for object_id, rel in (("duck", "duck.obj"), ("ball", "soccerball.obj")):
        mesh = assets._pybullet_data() / rel
        (folder / object_id / "meshes").mkdir(parents=True)
        (folder / object_id / "materials" / "textures").mkdir(parents=True)
        shutil.copy(mesh, folder / object_id / "meshes" / "model.obj")
        shutil.copy(assets.mtl_texture(mesh), folder / object_id / "materials" / "textures" / "texture.png")
    texture = folder / "duck" / "materials" / "textures" / "texture.png"
    head = texture.read_bytes()[:64]
    texture.write_bytes(head + os.urandom(5000))  # the format's magic, then garbage
    objects = assets.discover_gso(folder)
    with pytest.raises(DataError, match=r"GSO object duck: texture .* cannot be decoded .*re-download") as info:
        assets.assets_digest(objects, [])
    assert "\n" not in str(info.value)
    assets.assets_digest([o for o in objects if o.id == "ball"], [])  # the intact one passes


def test_mnist_idx_with_a_zeroed_body_or_a_huge_header_stops_before_writing(tmp_path):
    from lsbench.generators.mnist import idx as mnist_idx

    folder = write_fake_mnist(tmp_path / "m")
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((30, 28, 28), np.uint8))
    out = tmp_path / "ds"
    done = _run_cli("generate", "mnist", "--mnist-dir", str(folder), "--out", str(out), *TINY_CLI, "-q")
    assert_one_error_line(done, "30 of the 30 train images are blank", "re-download")
    assert not out.exists()

    huge = write_fake_mnist(tmp_path / "h", gz=False)
    # A header promising 10^6 images of 1000x1000 px, over a 30-image body: refused before reading the body.
    write_idx(huge / "train-images-idx3-ubyte", np.zeros((30, 28, 28), np.uint8), dims=(1_000_000, 1000, 1000))
    with pytest.raises(DataError, match="promises 1,000,000,000,000 bytes"):
        mnist_idx.load("train", huge)
