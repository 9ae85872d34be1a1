"""Bad input, as a user meets it: one line on stderr naming the key or file, exit code 2, no traceback, and
nothing trains. The table runs `sparse_lab.cli.main` in this process (Hydra composes in ~0.4 s); a few
checks at the end run the real console script."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_lab.cli import main
from tests.conftest import run_cli
from tests.data.test_image_data import write_cifar, write_imagefolder
from tests.data.test_modelnet40 import write_layout
from tests.data.test_sceneflow_loaders import write_flyingthings, write_scene

FT3D = "FlyingThings3D_subset_processed_35m"
FAST = ["trainer=fast", "logger=none", "deploy.export=false", "deploy.latency=false"]


@dataclass
class Case:
    id: str
    args: list[str]
    expect: str  # a fragment of the one line on stderr (the key or file it names, and what is wrong)
    stage: str = "schema"  # schema: refused before the run starts; data: the run starts, fails before training
    files: object = None  # files(tmp_path) writes what the case reads under tmp_path


# -- files the data and profile cases read ----------------------------------------------------------------
def cifar_truncated(root: Path) -> None:
    path = write_cifar(root / "data") / "data_batch_2"
    path.write_bytes(path.read_bytes()[:100])


def cifar_wrong_shape(root: Path) -> None:
    folder = write_cifar(root / "data")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((10, 1024), np.uint8), b"labels": [0] * 10}, f)


def imagefolder_corrupt(root: Path) -> None:
    write_imagefolder(root / "data" / "tiny")
    (root / "data/tiny/val/dog/1.png").write_bytes(b"\x89PNG not really")


def imagefolder_empty_class(root: Path) -> None:
    write_imagefolder(root / "data" / "tiny")
    for image in (root / "data/tiny/val/eel").iterdir():
        image.unlink()


def modelnet_empty_split(root: Path) -> None:
    (root / "data").mkdir()
    (write_layout(root / "data") / "modelnet40_test.txt").write_text("\n")


def modelnet_nan(root: Path) -> None:
    (root / "data").mkdir()
    folder = write_layout(root / "data")
    path = folder / "chair" / "chair_0002.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["nan,0,0,0,0,1", *lines[1:]]) + "\n")


def ft3d_truncated(root: Path) -> None:
    write_flyingthings(root / "data")
    path = root / "data" / FT3D / "train" / "0000002" / "pc1.npy"
    path.write_bytes(path.read_bytes()[:200])


def kitti_one_scene(root: Path) -> None:
    pc1 = np.random.default_rng(0).uniform(-5, 5, (40, 3)).astype(np.float32)
    write_scene(root / "data" / "KITTI_processed_occ_final" / "000000", pc1, pc1 + 0.1)


RUN_CONFIG = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 8, "image_size": 32, "in_chans": 3},
    "model": {"name": "vit", "preset": "tiny"},
    "sparsity": {"name": "dense"},
    "hardware": {"name": "cpu", "energy_pj_per_mac": 4.6, "energy_pj_per_sop": 0.9},
}


def run_dir(results: object, deployed: bytes | None = b"", name: str = "run"):
    """A run folder holding ``results`` as results.json (a dict, or raw text) and ``deployed`` as deployed.pt2."""

    def files(root: Path) -> None:
        folder = root / name
        folder.mkdir()
        text = results if isinstance(results, str) else json.dumps(results)
        (folder / "results.json").write_text(text)
        if deployed is not None:
            (folder / "deployed.pt2").write_bytes(deployed)

    return files


def foreign_checkpoint(root: Path) -> None:
    """A plain state dict saved under the deployed program's name."""
    run_dir({"status": "completed", "config": RUN_CONFIG}, deployed=None)(root)
    torch.save({"weight": torch.zeros(3)}, root / "run" / "deployed.pt2")


BAD_RECORDED = {**RUN_CONFIG, "data": {**RUN_CONFIG["data"], "batch_size": 0}}

CASES = [
    # data
    Case("data-batch-size-text", ["data.batch_size=abc"], "data.batch_size must be an integer >= 1, got 'abc'"),
    Case("data-split-sum", ["data.split=[0.5,0.5,0.5]"], "data.split must be three positive fractions summing to 1"),
    Case("data-unknown-key", ["+data.batchsize=8"], "data.batchsize is not a key of dataset 'digits'; did you mean"),
    Case("data-unknown-option", ["data=cifar100"], "unknown data 'cifar100'; did you mean 'cifar10'? choose one of:"),
    Case("data-missing-folder", ["data=cifar10", "paths.data_dir=nowhere"], "cifar10 not found: missing nowhere/cifar"),
    Case(
        "imagefolder-missing-val",
        ["data=imagefolder", "data.root=tiny", "paths.data_dir=data"],
        "imagefolder not found: missing data/tiny/val",
        files=lambda root: write_imagefolder(root / "data" / "tiny", splits=("train",)),
    ),
    Case("data-model-modality", ["model=e3dsnn", "data=digits"], "model 'e3dsnn' takes point_cloud input but the data"),
    # model
    Case("model-unknown-option", ["model=vitt"], "unknown model 'vitt'; did you mean 'vit'? choose one of:"),
    Case("model-preset", ["model.preset=huge"], "unknown model.preset 'huge'; choose one of: tiny, small32"),
    Case("model-width", ["model=mobilenet_v2", "model.width_mult=0"], "model.width_mult must be a number > 0, got 0"),
    Case("optim-lr", ["model.optim.optimizer.lr=0"], "model.optim.optimizer.lr must be a number > 0, got 0"),
    Case("optim-optimizer", ["model.optim.optimizer.name=adagrad"], "unknown optimizer 'adagrad'; choose one of:"),
    Case(
        "optim-nesterov",
        ["model=mobilenet_v2", "model.optim.optimizer.momentum=0"],
        "model.optim.optimizer.nesterov=true needs model.optim.optimizer.momentum > 0",
    ),
    # sparsity
    Case("sparsity-range", ["sparsity.sparsity=1.5"], "sparsity.sparsity must be a number in [0, 1), got 1.5"),
    Case("sparsity-type", ["sparsity.sparsity=most"], "sparsity.sparsity must be a number in [0, 1), got 'most'"),
    Case("sparsity-distribution", ["sparsity.distribution=erkk"], "unknown sparsity.distribution 'erkk'; did you mean"),
    Case(
        "sparsity-typo-key",
        ["sparsity.sparsty=0.5"],
        "Could not override 'sparsity.sparsty': no such config key; did you mean sparsity.sparsity?",
    ),
    Case("sparsity-added-typo-key", ["+sparsity.sparsty=0.5"], "sparsity.sparsty is not a key of sparsity method"),
    Case("nm-n-above-m", ["sparsity=nm", "sparsity.n=5"], "sparsity.n must be <= sparsity.m"),
    Case("lottery-rounds", ["sparsity=lottery", "sparsity.rounds=2.5"], "sparsity.rounds must be an integer >= 0"),
    Case("rigl-final-alpha", ["sparsity=rigl", "sparsity.final_alpha=0.5"], "sparsity.final_alpha must be <="),
    Case("sparsity-exclude-regex", ["sparsity.exclude=['head(']"], "sparsity.exclude must be a list of regular"),
    # hardware
    Case("hardware-energy", ["hardware.energy_pj_per_mac=-1"], "hardware.energy_pj_per_mac must be a number >= 0"),
    Case("hardware-unknown-option", ["hardware=ampere"], "unknown hardware 'ampere'; did you mean 'ampere_2to4'?"),
    # trainer
    Case("trainer-max-epochs-endless", ["trainer.max_epochs=-1"], "trainer.max_epochs=-1 (no epoch limit) needs"),
    Case(
        "trainer-max-epochs-zero",
        ["trainer.max_epochs=0"],
        "trainer.max_epochs must be an integer >= 1, -1 or null, got 0",
    ),
    Case("trainer-precision", ["trainer.precision=48"], "unknown trainer.precision 48; choose one of:"),
    Case("trainer-max-time", ["trainer.max_time=12h"], "trainer.max_time must be a duration 'DD:HH:MM:SS'"),
    Case("trainer-run-sets-it", ["+trainer.accelerator=gpu"], "trainer.accelerator cannot be set: the hardware"),
    # logger, top level
    Case("wandb-mode", ["logger=wandb", "logger.wandb.mode=sometimes"], "unknown logger.wandb.mode 'sometimes'"),
    Case("seed-negative", ["seed=-1"], "seed must be an integer in [0, 4294967295], got -1"),
    Case("deploy-export", ["deploy.export=yes"], "deploy.export must be true or false, got 'yes'"),
    Case("top-level-typo", ["sed=1"], "Could not override 'sed': no such config key; did you mean seed?"),
    # data files: the run starts, fails before the first training step
    Case(
        "cifar-truncated",
        ["data=cifar10", "paths.data_dir=data", "data.num_workers=0"],
        "cifar10 file data/cifar-10-batches-py/data_batch_2 is unreadable (UnpicklingError)",
        stage="data",
        files=cifar_truncated,
    ),
    Case(
        "cifar-wrong-shape",
        ["data=cifar10", "paths.data_dir=data", "data.num_workers=0"],
        "cifar10 file data/cifar-10-batches-py/test_batch holds data of shape [10, 1024]",
        stage="data",
        files=cifar_wrong_shape,
    ),
    Case(
        "imagefolder-corrupt-image",
        ["data=imagefolder", "data.root=tiny", "paths.data_dir=data", "data.image_size=32", "data.num_workers=0"],
        "imagefolder file data/tiny/val/dog/1.png is not an image PIL can read",
        stage="data",
        files=imagefolder_corrupt,
    ),
    Case(
        "imagefolder-class-without-images",
        ["data=imagefolder", "data.root=tiny", "paths.data_dir=data", "data.image_size=32", "data.num_workers=0"],
        "imagefolder data/tiny/val: Found no valid file for the classes eel",
        stage="data",
        files=imagefolder_empty_class,
    ),
    Case(
        "modelnet40-empty-split",
        ["model=e3dsnn", "model.preset=tiny", "data=modelnet40", "paths.data_dir=data", "data.num_classes=2"],
        "modelnet40_normal_resampled/modelnet40_test.txt is empty",
        stage="data",
        files=modelnet_empty_split,
    ),
    Case(
        "modelnet40-nan",
        ["model=e3dsnn", "model.preset=tiny", "data=modelnet40", "paths.data_dir=data", "data.num_classes=2"],
        "modelnet40_normal_resampled/chair/chair_0002.txt has non-finite coordinates",
        stage="data",
        files=modelnet_nan,
    ),
    Case(
        "flyingthings3d-truncated",
        ["model=sctn", "model.preset=tiny", "data=flyingthings3d", "paths.data_dir=data", "data.num_workers=0"],
        f"flyingthings3d file data/{FT3D}/train/0000002/pc1.npy is unreadable",
        stage="data",
        files=ft3d_truncated,
    ),
    Case(
        "kitti-empty-test-split",
        ["model=sctn", "model.preset=tiny", "data=kitti_sf", "paths.data_dir=data", "data.num_workers=0"],
        "kitti_sf at data/KITTI_processed_occ_final (1 scene, split [0.6, 0.1, 0.3]): the test split is empty",
        stage="data",
        files=kitti_one_scene,
    ),
    # profile
    Case("profile-range", ["profile", "sparsity.sparsity=2"], "sparsity.sparsity must be a number in [0, 1), got 2"),
    Case("profile-not-a-run", ["profile", "run=nowhere"], "nowhere has no results.json: not a sparse-lab run"),
    Case(
        "profile-results-without-model",
        ["profile", "run=run"],
        "run/results.json is not a sparse-lab results file (its config has no model section)",
        files=run_dir({"config": {"data": {}, "hardware": {}}}),
    ),
    Case(
        "profile-bad-recorded-config",
        ["profile", "run=run"],
        "run/results.json records a config sparse-lab refuses: data.batch_size must be an integer >= 1, got 0",
        files=run_dir({"config": BAD_RECORDED}),
    ),
    Case(
        "profile-corrupt-deployed",
        ["profile", "run=run"],
        "run/deployed.pt2 cannot be loaded: BadZipFile: File is not a zip file",
        stage="data",
        files=run_dir({"config": RUN_CONFIG}, deployed=b"PK\x03\x04 truncated zip"),
    ),
    Case(
        "profile-foreign-checkpoint",
        ["profile", "run=run"],
        "run/deployed.pt2 cannot be loaded: RuntimeError: not a torch.export archive",
        stage="data",
        files=foreign_checkpoint,
    ),
]


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    """`sparse-lab <args>` in this process, from ``tmp_path``: (exit code, stderr, whether a run started,
    whether a training step ran). Hydra's global state and the logging it configures are put back."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import sparse_lab.experiment
    from sparse_lab.tasks.classification import ClassificationTask
    from sparse_lab.tasks.scene_flow import SceneFlowTask

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    events = {"run": 0, "trained": 0, "stub_run": False}
    real_run = sparse_lab.experiment.run

    def spy_run(*args, **kwargs):
        events["run"] += 1
        return {} if events["stub_run"] else real_run(*args, **kwargs)

    def no_training(*args, **kwargs):
        events["trained"] += 1
        raise AssertionError("a bad input reached a training step")

    monkeypatch.setattr(sparse_lab.experiment, "run", spy_run)
    monkeypatch.setattr(ClassificationTask, "training_step", no_training)
    monkeypatch.setattr(SceneFlowTask, "training_step", no_training)

    def call(args: list[str], capfd) -> tuple[int, str, dict]:
        capfd.readouterr()
        try:
            code = main(args)
        except SystemExit as exit_:  # a single run's error leaves through SystemExit (cli.train_job)
            code = exit_.code
        return code, capfd.readouterr().err, events

    yield call
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def case_args(case: Case) -> list[str]:
    if case.args[0] == "profile":
        return case.args
    return ["train", *FAST, *case.args]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_never_trains(case, in_process, tmp_path, capfd):
    if case.files:
        case.files(tmp_path)
    code, err, events = in_process(case_args(case), capfd)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and case.expect in lines[0], err
    assert "Traceback" not in err
    assert events["trained"] == 0
    if case.stage == "schema":  # refused before the run (and torch's heavy machinery) starts
        assert events["run"] == 0
    for results in tmp_path.glob("outputs/runs/*/*/results.json"):  # a failed run says why
        recorded = json.loads(results.read_text())
        assert recorded["status"] == "failed" and recorded["rounds"] == [] and case.expect in lines[0]
        assert recorded["error"] in lines[0]


def test_there_are_forty_bad_inputs_across_every_group():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    args = " ".join(" ".join(c.args) for c in CASES)
    for group in ("data", "model", "sparsity", "hardware", "trainer", "logger", "seed", "deploy", "profile"):
        assert group in args


def test_repeated_in_process_runs_compose_afresh(in_process, capfd):
    """Hydra's global state does not leak from one call into the next (a good run after bad ones)."""
    assert in_process(["train", *FAST, "sparsity.sparsity=1.5"], capfd)[0] == 2
    code, err, _ = in_process(["train", *FAST, "sparsity.sparsity=0.5", "--cfg", "job"], capfd)
    assert code == 0 and not err.strip()


def test_a_legal_no_op_value_is_a_printed_warning(in_process, capfd):
    _, _, events = in_process(["--version"], capfd)
    events["stub_run"] = True  # the run itself is not what this test is about
    code, err, events = in_process(["train", *FAST, "sparsity=lottery", "sparsity.rounds=0"], capfd)
    assert code == 0 and events["run"] == 1
    assert err.strip() == "warning: sparsity.rounds=0: lottery trains the dense network once and prunes nothing"


def test_a_plugin_is_checked_on_the_keys_its_schema_declares(in_process, tmp_path, capfd, monkeypatch):
    """A plug-in's config (search path + `_target_`) with `_schema_`: its own keys get the same one line."""
    (tmp_path / "my_lab" / "configs" / "model").mkdir(parents=True)
    (tmp_path / "my_lab" / "my_keys.py").write_text(
        "from sparse_lab.schema import Int, Schema\n\n\nclass Tiny(Schema):\n    owner = \"model 'tiny'\"\n"
        "    width = Int(ge=1)\n"
    )
    (tmp_path / "my_lab" / "configs" / "model" / "tiny.yaml").write_text(
        "# A plug-in model\n_target_: my_models.Tiny\n_schema_: my_keys.Tiny\nwidth: 16\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "my_lab"))
    args = ["train", *FAST, f"hydra.searchpath=[file://{tmp_path}/my_lab/configs]", "model=tiny", "model.width=0"]
    code, err, events = in_process(args, capfd)
    assert code == 2 and err.strip() == "error: model.width must be an integer >= 1, got 0" and events["run"] == 0


def test_a_sweep_job_with_a_bad_value_fails_alone_and_its_results_say_why(in_process, tmp_path, capfd):
    _, _, events = in_process(["--version"], capfd)
    events["stub_run"] = True  # the good job's run itself is not what this test is about
    code, err, events = in_process(["train", "-m", *FAST, "sparsity.sparsity=0.5,1.5"], capfd)
    assert code == 2 and events["run"] == 1  # the good job ran, the bad one never started
    job_line, summary = err.strip().splitlines()  # the sweep's own two lines: the job's error, the summary
    assert job_line.startswith("error: job 1 (") and summary == "error: 1 sweep job(s) failed: [1]"
    assert job_line.endswith(" sparsity.sparsity=1.5): sparsity.sparsity must be a number in [0, 1), got 1.5")
    (results,) = tmp_path.glob("outputs/multirun/*/*/1_*/results.json")
    recorded = json.loads(results.read_text())
    assert recorded["status"] == "failed" and recorded["error"].startswith("sparsity.sparsity must be a number")


def test_debug_shows_the_traceback(in_process, capfd):
    code, err, _ = in_process(["train", "--debug", *FAST, "sparsity.sparsity=1.5"], capfd)
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: sparsity.sparsity")


# -- the real console script: a handful ------------------------------------------------------------------
def test_a_bad_value_is_refused_before_torch_is_imported(tmp_path):
    code = (
        "import sys\n"
        "from sparse_lab.cli import main\n"
        "try:\n"
        "    main(['train', 'data.batch_size=abc'])\n"
        "except SystemExit as exit_:\n"
        "    assert exit_.code == 2\n"
        "assert 'torch' not in sys.modules and 'pytorch_lightning' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "error: data.batch_size must be an integer >= 1, got 'abc'"


@pytest.mark.parametrize(
    "args, line",
    [
        (["train", "model=vitt"], "error: unknown model 'vitt'; did you mean 'vit'? choose one of: "),
        (["profile", "run=nowhere"], "error: nowhere has no results.json: not a sparse-lab run directory"),
    ],
)
def test_the_console_script_prints_one_line_and_exits_2(args, line, tmp_path):
    result = run_cli(*args, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line] or result.stderr.startswith(line), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, capfd):
    # A file where the run folder should go (chmod does not stop root, who runs CI): Hydra cannot create it.
    (tmp_path / "taken").write_text("")
    from sparse_lab.cli import main

    code = main(["train", "trainer=fast", "logger=none", f"hydra.run.dir={tmp_path / 'taken' / 'run'}"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: cannot write {tmp_path / 'taken' / 'run'}: Not a directory")
