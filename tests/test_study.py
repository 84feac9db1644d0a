"""``lsbench study``: a study file and its flags, the plan (keyed, stable folders), running it
(sequentially, resumed, skipped when done), the leaderboard and summary of its seeds, the SLURM path
through submitit's own local executor, and one-line refusals of bad input before anything starts.

Runs are tiny (1-digit 32-px MNIST-LS, micro ResNet, one step per epoch): these tests check the
protocol and the bookkeeping, not what the models learn (``perf/results/study_cpu_resnet.json`` is
the measured study).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_user_error, generate_mnist

from lsbench.dec_models import checkpoint
from lsbench.errors import ConfigError, LsbenchError
from lsbench.study import StudyConfig, launch, load_study, plan_study, report, summarize
from lsbench.study.plan import DONE, PARTIAL, TODO, refresh
from lsbench.util import sha256_file

TINY = dict(archs=("resnet",), methods=("aug", "invl", "dec"), img_size=32, epochs=1, finetune_epochs=1,
            batch_size=16, max_steps_per_epoch=1, eval_batch_size=16, workers=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study_data") / "mnist1"
    assert generate_mnist(out, digits=1, size=32, scale_range=(0.6, 1.1), train=32, test=16, variants=1,
                          shard_size=32).complete
    return out


def study(data: Path, out: Path, **overrides) -> StudyConfig:
    return load_study(None, **{**TINY, "data": (str(data),), "out": str(out), **overrides})


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished two-seed study (sequential launcher)."""
    out = tmp_path_factory.mktemp("study") / "s"
    plan = plan_study(study(data, out, seeds=(0, 1), name="tiny"))
    outcome = launch(plan)
    outcome.raise_failures(plan)
    report(plan)
    return plan, outcome


# --------------------------------------------------------------------------- the plan


def test_plan_is_the_papers_protocol(data, tmp_path):
    plan = plan_study(study(data, tmp_path / "s", seeds=(0, 1)))
    assert [(r.method, r.seed, r.role) for r in plan.runs] == [
        ("aug", 0, "start"), ("invl", 0, "finetune"), ("dec", 0, "finetune"),
        ("aug", 1, "start"), ("invl", 1, "finetune"), ("dec", 1, "finetune")]
    starts = {r.seed: r for r in plan.runs if r.role == "start"}
    for run in plan.runs:
        assert run.status == TODO and run.splits == ("test",)
        assert run.folder == tmp_path / "s" / "runs" / "mnist1" / run.key
        if run.role == "finetune":
            assert run.parent == starts[run.seed].key
            assert run.train.init_from == str(starts[run.seed].folder / "last.pt")
            assert run.train.epochs == 1 and run.train.lr == 3e-4  # the cpu budget's fine-tune lr
        else:
            assert run.train.init_from is None and run.train.lr == 1e-3
    # one group per method: the seeds of a method share it, methods do not
    assert len({r.group for r in plan.runs}) == 3
    assert {r.group for r in plan.runs if r.method == "dec"} == {plan.runs[2].group}
    assert not (tmp_path / "s").exists()  # planning writes nothing


def test_plan_keys_are_stable_and_follow_the_config(data, tmp_path):
    keys = [r.key for r in plan_study(study(data, tmp_path / "a")).runs]
    assert keys == [r.key for r in plan_study(study(data, tmp_path / "b", workers=2)).runs]  # where/how: same runs
    other = [r.key for r in plan_study(study(data, tmp_path / "a", finetune_lr=1e-4)).runs]
    assert other[0] == keys[0] and other[1:] != keys[1:] and not set(other[1:]) & set(keys[1:])
    start = [r.key for r in plan_study(study(data, tmp_path / "a", lr=1e-4)).runs]
    assert not set(start) & set(keys)  # a new start: its fine-tunes are new runs too
    # Another method's option is not part of a run's identity: a DEC setting changes the DEC run only.
    dec = {r.model: r.key for r in plan_study(study(data, tmp_path / "a", train=("dec_width=16",))).runs}
    assert dec["resnet_aug"] == keys[0] and dec["resnet_invl"] == keys[1] and dec["resnet_dec"] != keys[2]


def test_start_none_trains_every_method_from_scratch(data, tmp_path):
    plan = plan_study(study(data, tmp_path / "s", start="none"))
    assert [(r.method, r.role, r.parent) for r in plan.runs] == [
        ("aug", "start", None), ("invl", "start", None), ("dec", "start", None)]


# --------------------------------------------------------------------------- running


def test_study_runs_evaluates_and_summarises(finished):
    plan, outcome = finished
    assert len(outcome.finished) == 6 and not outcome.failed
    refresh(plan)
    assert all(r.status == DONE for r in plan.runs)
    for run in plan.runs:
        (path,) = run.results.values()
        result = json.loads(path.read_text())
        assert result["study"] == {"name": "tiny", "group": run.group, "run": run.key, "seed": run.seed,
                                   "role": run.role, "run_dir": f"../../runs/mnist1/{run.key}"}
        assert (path.parent / result["study"]["run_dir"]).resolve() == run.folder.resolve()
        assert result["model"]["checkpoint_sha256"] == sha256_file(run.weights)
        if run.parent:  # fine-tuned from its start's final weights, and says so
            parent = plan.run(run.parent)
            assert result["model"]["init_from"]["sha256"] == sha256_file(parent.weights)
            assert checkpoint.read(run.weights)["init_from"]["model"] == "resnet_aug"
    summary = json.loads((plan.out / "summary.json").read_text())
    assert summary == summarize(plan) and summary["done"] == 6
    dec = next(g for g in summary["groups"] if g["method"] == "dec")
    accs = [s["accuracy"] for s in dec["seeds"]]
    assert [s["seed"] for s in dec["seeds"]] == [0, 1] and dec["accuracy"]["n"] == 2
    assert dec["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    board = next(plan.site.glob("*/leaderboard.md")).read_text()
    assert "study tiny, seeds 0, 1" in board and "n (seeds)" in board


def test_a_finished_study_is_skipped(finished):
    plan, _ = finished
    before = {r.key: r.weights.stat().st_mtime_ns for r in plan.runs}
    again = plan_study(plan.study)
    assert all(r.status == DONE for r in again.runs)
    outcome = launch(again)
    assert outcome.finished == [] and {r.key: r.weights.stat().st_mtime_ns for r in again.runs} == before


def test_interrupted_run_is_partial_then_resumed(data, tmp_path):
    cfg = study(data, tmp_path / "s", methods=("aug", "dec"), finetune_epochs=2)
    plan = plan_study(cfg)
    calls = []

    def progress(run, stage):
        def update(done, total):
            calls.append((run.method, stage, done))
            if run.method == "dec" and stage == "train" and done == 2:  # the second epoch's step
                raise KeyboardInterrupt

        return update

    with pytest.raises(KeyboardInterrupt):
        launch(plan, progress=progress)
    plan = plan_study(cfg)
    start, dec = plan.runs
    assert start.status == DONE and dec.status == PARTIAL and dec.note == "epoch 1/2"
    launch(plan)
    refresh(plan)
    assert dec.status == DONE
    log = [json.loads(line) for line in (dec.folder / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r.get("event") == "epoch"] == [0, 1]  # epoch 0 not redone


def test_evaluations_missing_after_training_are_computed(finished, tmp_path):
    plan, _ = finished
    copy = tmp_path / "s"
    shutil.copytree(plan.out, copy)
    moved = plan_study(study(Path(plan.study.data[0]), copy, seeds=(0, 1), name="tiny"))
    victim = moved.runs[2]
    victim.results["test"].unlink()
    refresh(moved)
    assert victim.status == PARTIAL and victim.note == "trained; 0/1 evaluated"
    mtime = victim.weights.stat().st_mtime_ns
    launch(moved)
    refresh(moved)
    assert victim.status == DONE and victim.weights.stat().st_mtime_ns == mtime  # evaluated, not retrained


@pytest.mark.slow
def test_slurm_path_through_submitits_local_executor(data, tmp_path):
    cfg = study(data, tmp_path / "s", methods=("aug", "dec"), launcher="slurm", slurm_gpus=0, slurm_cpus=1)
    cfg.cluster = "local"  # submitit's own local executor: the same jobs as on SLURM, run here
    plan = plan_study(cfg)
    outcome = launch(plan)
    outcome.raise_failures(plan)
    assert sorted(outcome.finished) == sorted(r.key for r in plan.runs)
    refresh(plan)
    assert all(r.status == DONE for r in plan.runs)
    jobs = sorted((tmp_path / "s" / "slurm").glob("*/*_submitted.pkl"))  # submitit's own job folders
    assert len(jobs) == 2 and all(list(j.parent.glob("*_0_log.err")) for j in jobs)


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine is a SLURM node")
def test_slurm_without_a_cluster_is_one_line(data, tmp_path):
    plan = plan_study(study(data, tmp_path / "s", launcher="slurm"))
    with pytest.raises(LsbenchError, match="--launcher local") as e:
        launch(plan)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_process_pool_runs_fine_tunes_after_their_start(data, tmp_path):
    cfg = study(data, tmp_path / "s", seeds=(0, 1), methods=("aug", "dec"), jobs=2)
    plan = plan_study(cfg)
    outcome = launch(plan)
    outcome.raise_failures(plan)
    refresh(plan)
    assert all(r.status == DONE for r in plan.runs)
    for run in plan.runs:
        assert (run.folder / "run.log").read_text().strip()
        if run.parent:
            parent = plan.run(run.parent)
            assert checkpoint.read(run.weights)["init_from"]["sha256"] == sha256_file(parent.weights)


# --------------------------------------------------------------------------- bad input, before anything starts


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ('data = ["d"]\narchs = ["resnet"]\nepoch = 3\n', ("study.toml:3", "unknown key 'epoch'")),
        ('data = ["d"]\n\narchs = ["resnet", "vgg"]\n', ("study.toml:3", "unknown arch 'vgg'")),
        ('data = ["d"]\nmethods = ["aug", "dek"]\n', ("study.toml:2", "unknown method 'dek'")),
        ('data = ["d"]\n[train]\nlr = 0.1\nwarmup = 2\n', ("study.toml:4", "no key 'warmup'")),
        ('data = ["d"]\n[train]\nseed = 2\n', ("study.toml:3", "no key 'seed'")),  # the study's own
        ('data = ["d"]\nseeds = [0, 0]\n', ("study.toml:2", "distinct")),
        ('data = ["d"]\nbudget = "huge"\n', ("study.toml:2", "budget")),
        ('data = ["d"\n', ("study.toml", "not valid TOML")),
        ('archs = ["resnet"]\n', ("at least one dataset",)),
    ],
)
def test_bad_study_file_is_one_line_with_its_line(tmp_path, body, needles):
    with pytest.raises(ConfigError) as e:
        load_study(write(tmp_path / "study.toml", body))
    assert "\n" not in str(e.value)
    for needle in needles:
        assert needle in str(e.value)


def test_file_values_paths_and_flags(tmp_path):
    (tmp_path / "cfg").mkdir()
    body = 'data = ["../d"]\nseeds = [0, 1, 2]\n[train]\nlatent_mode = "equivariant"\n'
    file = write(tmp_path / "cfg" / "mine.toml", body)
    cfg = load_study(file, seeds=(5,))
    assert cfg.seeds == (5,) and cfg.data == (str(tmp_path / "cfg" / ".." / "d"),)
    assert cfg.out == str(tmp_path / "cfg" / "mine") and cfg.train_overrides() == {"latent_mode": "equivariant"}


def test_missing_dataset_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(LsbenchError, match="nope") as e:
        plan_study(study(tmp_path / "nope", tmp_path / "s"))
    assert "\n" not in str(e.value) and not (tmp_path / "s").exists()


def test_unknown_split_is_refused(data, tmp_path):
    with pytest.raises(LsbenchError, match="test_far"):
        plan_study(study(data, tmp_path / "s", splits=("test_far",)))


def test_a_finished_run_on_a_regenerated_dataset_is_refused(data, finished, tmp_path):
    plan, _ = finished
    copy = tmp_path / "mnist1"
    assert generate_mnist(copy, digits=1, size=32, scale_range=(0.6, 1.1), train=32, test=16, variants=1,
                          shard_size=32, seed=7).complete  # same folder name, other content
    shutil.copytree(plan.out, tmp_path / "s")
    with pytest.raises(ConfigError, match="another version of dataset mnist1") as e:
        plan_study(study(copy, tmp_path / "s", seeds=(0, 1), name="tiny"))
    assert "\n" not in str(e.value)


def test_a_run_whose_record_no_longer_matches_is_refused(finished, tmp_path):
    plan, _ = finished
    shutil.copytree(plan.out, tmp_path / "s")
    record_path = tmp_path / "s" / "runs" / "mnist1" / plan.runs[0].key / "run.json"
    record = json.loads(record_path.read_text())
    record["train"]["lr"] = 0.5
    record_path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="trained with other lr"):
        plan_study(study(Path(plan.study.data[0]), tmp_path / "s", seeds=(0, 1), name="tiny"))


def test_a_record_without_another_methods_option_still_matches(finished, tmp_path):
    """An Aug run recorded before a DEC option existed is the same Aug run (see the run identity)."""
    plan, _ = finished
    shutil.copytree(plan.out, tmp_path / "s")
    record_path = tmp_path / "s" / "runs" / "mnist1" / plan.runs[0].key / "run.json"
    record = json.loads(record_path.read_text())
    assert plan.runs[0].method == "aug"
    del record["train"]["dec_width"], record["train"]["canon_width"]
    record_path.write_text(json.dumps(record))
    again = plan_study(study(Path(plan.study.data[0]), tmp_path / "s", seeds=(0, 1), name="tiny"))
    assert again.runs[0].status == "done"


# --------------------------------------------------------------------------- the command line


def test_cli_plan_shows_status_and_flags_override_the_file(cli, data, finished, tmp_path):
    plan, _ = finished
    file = write(tmp_path / "s.toml", f'name = "tiny"\ndata = ["{data}"]\nout = "{plan.out}"\nseeds = [0, 1, 2]\n'
                 'archs = ["resnet"]\nmethods = ["aug", "invl", "dec"]\nimg_size = 32\nepochs = 1\n'
                 'finetune_epochs = 1\nbatch_size = 16\nmax_steps_per_epoch = 1\nworkers = 0\n')
    result = cli("study", "plan", file, "--seeds", "0,1", "--no-estimate")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("done") >= 6 and "todo" not in result.stdout.split("┘")[0]
    result = cli("study", "plan", file, "--no-estimate")  # the file's three seeds: seed 2 is new
    assert result.exit_code == 0 and "3 todo" in result.stdout


def test_cli_bad_input_is_one_error_line(cli, tmp_path):
    assert_user_error(cli("study", "plan", tmp_path / "none.toml"), "none.toml", "not found")
    assert_user_error(cli("study", "run", write(tmp_path / "s.toml", 'data = ["d"]\narchs = ["vgg"]\n')),
                      "s.toml:2", "unknown arch 'vgg'")
    assert_user_error(cli("study", "run", "--data", tmp_path / "missing", "--seeds", "0"), "missing")
    assert not (tmp_path / "s").exists() and not (tmp_path / "study").exists()


def test_cli_run_prints_the_leaderboard(cli, data, tmp_path):
    out = tmp_path / "s"
    result = cli("study", "run", "--data", data, "--out", out, "--methods", "aug,dec", "--img-size", "32",
                 "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "1",
                 "--workers", "0", "--eval-batch-size", "16", "-q")
    assert result.exit_code == 0, result.output
    assert (out / "summary.json").is_file() and (out / "site" / "index.html").is_file()
