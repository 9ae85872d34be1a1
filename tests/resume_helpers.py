"""What the resume and run-status tests share: a small, fast configuration with the faulty plug-in model
(tests/faulty_model.py), and `sparse-lab` called in this process."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

from omegaconf import open_dict

ROOT = Path(__file__).resolve().parent.parent  # on PYTHONPATH: tests.faulty_model imports
# Three epochs of 10 steps; last.ckpt after each epoch.
SMALL = [
    "trainer.enable_checkpointing=true",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=10",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
]
MODEL = {"_target_": "tests.faulty_model.FaultyCNN", "optim": {"optimizer": {"name": "adamw", "lr": 3.0e-3}}}
FAULTY_YAML = """\
# tests/faulty_model.py
_target_: tests.faulty_model.FaultyCNN
nan_at: null
signal_at: null
signal: SIGTERM
once_file: null
optim:
  optimizer: {name: adamw, lr: 3.0e-3}
"""


def faulty_cfg(make_cfg, *overrides, **model):
    cfg = make_cfg(*SMALL, *overrides)
    with open_dict(cfg):
        cfg.model = {**MODEL, **model}
    return cfg


def read(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def faulty_args(tmp_path: Path) -> list[str]:
    """CLI overrides selecting the faulty model through a config folder of its own (a plug-in's way)."""
    (tmp_path / "configs" / "model").mkdir(parents=True, exist_ok=True)
    (tmp_path / "configs" / "model" / "faulty.yaml").write_text(FAULTY_YAML)
    return [f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "model=faulty", *SMALL]


@contextmanager
def in_process_cli(tmp_path: Path, monkeypatch, capfd):
    """`sparse-lab <args>` in this process (no interpreter start-up), from ``tmp_path``: (exit code,
    stderr, stdout). Hydra's global state and the logging it configures are put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from sparse_lab.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def call(*args: str) -> tuple[int, str, str]:
        capfd.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
        finally:
            GlobalHydra.instance().clear()
            HydraConfig.instance().cfg = None
        out, err = capfd.readouterr()
        return code, err, out

    yield call
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
