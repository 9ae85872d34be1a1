"""Multi-process runs (``trainer=ddp``): every rank in one run directory, rank 0 the only writer.

Ranks come into being in one of three ways:

- ``sparse-lab train trainer=ddp`` with nothing else around: the command's process becomes a
  *supervisor* (``launch``). It starts ``trainer.devices`` worker processes on this node
  (``python -m sparse_lab.distributed <run dir>``), each running the same resolved config, waits for
  them, and when one fails stops the others and marks the run ``failed`` with that rank's error.
  Lightning's own launcher is not used: it re-executes ``sys.argv`` (the console script and Hydra's
  sweep arguments, which it cannot) and SIGKILLs the main process when a child dies, which would
  leave results.json saying ``running`` for ever.
- SLURM (``srun``, or the submitit launcher with ``tasks_per_node`` = devices): every task is a rank
  (Lightning's SLURMEnvironment); there is no supervisor.
- ``torchrun``: Lightning's TorchElasticEnvironment.

Ranks share nothing but the process group: every tensor (weights, masks, method state) is built in
each process from the same seed. ``MaskAgreement`` checks after every epoch that the masks are
bit-identical on every rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from sparse_lab.errors import RunInterrupted, UserError

RANKS_DIR = ".ranks"  # in the run directory: the workers' config, logs (ranks > 0) and errors
# Strategies that fork or spawn from inside the training process: the callbacks' tensors (the masks)
# would be moved to shared memory and shared between ranks.
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")
EXTERNAL_LAUNCHER_ENV = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")


def strategy_name(trainer_cfg: DictConfig) -> str:
    strategy = trainer_cfg.get("strategy", "auto")
    return strategy if isinstance(strategy, str) else type(strategy).__name__


def local_world_size(trainer_cfg: DictConfig, accelerator: str) -> int:
    """Processes per node the config asks for: ``trainer.devices`` under a ddp strategy, else 1."""
    if not strategy_name(trainer_cfg).startswith("ddp"):
        return 1
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    # "auto" or -1: every visible GPU; one process on a CPU.
    return torch.cuda.device_count() if accelerator == "gpu" else 1


def launched_externally() -> bool:
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return any(key in os.environ for key in EXTERNAL_LAUNCHER_ENV) or SLURMEnvironment.detect()


def launch_if_needed(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Under a multi-process config with no launcher around, start the ranks (this process supervises
    them) and return rank 0's results; otherwise None: this process is the run, or one of its ranks."""
    strategy = strategy_name(cfg.trainer)
    if strategy in SPAWNING_STRATEGIES:
        raise UserError(
            f"trainer.strategy={strategy} would share the sparsity masks between ranks through shared memory; "
            "use trainer=ddp (one process per device)"
        )
    if not strategy.startswith("ddp") or launched_externally():
        return None
    from sparse_lab.hardware import TARGETS

    local_world = local_world_size(
        cfg.trainer, TARGETS.from_config(OmegaConf.to_container(cfg.hardware, resolve=True)).accelerator
    )
    if local_world * int(cfg.trainer.get("num_nodes", 1) or 1) == 1:
        return None
    return launch(cfg, run_dir, local_world)


def global_rank() -> int:
    """This process's rank, known before any Trainer exists (from the launcher's environment)."""
    from lightning_fabric.utilities.rank_zero import _get_rank

    return _get_rank() or 0


# -- the supervisor ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(local_rank: int, local_world: int, num_nodes: int, port: int) -> dict[str, str]:
    node_rank = int(os.environ.get("NODE_RANK", 0))
    env = {
        **os.environ,
        "LOCAL_RANK": str(local_rank),
        "NODE_RANK": str(node_rank),
        "RANK": str(node_rank * local_world + local_rank),
        "WORLD_SIZE": str(local_world * num_nodes),
        "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
        "MASTER_PORT": os.environ.get("MASTER_PORT", str(port)),
    }
    # Lightning's rule for its own launcher: share the cores between the processes of a node.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // local_world)))
    return env


def launch(cfg: DictConfig, run_dir: Path, local_world: int) -> dict:
    """Start ``local_world`` ranks on this node, wait for them, return rank 0's results."""
    ranks_dir = run_dir / RANKS_DIR
    ranks_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    wandb = config.get("logger", {}).get("wandb")
    if isinstance(wandb, dict) and not wandb.get("group"):
        from sparse_lab.loggers import sweep_name  # the workers run outside Hydra: name the group here

        wandb["group"] = sweep_name()
    OmegaConf.save(OmegaConf.create(config), ranks_dir / "config.yaml")
    num_nodes = int(cfg.trainer.get("num_nodes", 1) or 1)
    port = free_port()
    procs = []
    for local_rank in range(local_world):
        out = None if local_rank == 0 else open(ranks_dir / f"rank{local_rank}.log", "w")  # noqa: SIM115
        command = [sys.executable, "-m", "sparse_lab.distributed", str(run_dir)]
        env = worker_env(local_rank, local_world, num_nodes, port)
        procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
    failure = supervise(procs, ranks_dir)
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if failure:
        rank, error = failure
        code = procs[rank].returncode
        if results.get("status") == "interrupted" and code is not None and code > 128:  # a signal: resumable
            raise RunInterrupted(code - 128, run_dir)
        results.update(status="failed", error=f"rank {rank}: {error}")
        results_path.write_text(json.dumps(results, indent=2, default=str))
        raise UserError(f"rank {rank} failed: {error} (logs: {ranks_dir})")
    return results


def supervise(procs: list[subprocess.Popen], ranks_dir: Path) -> tuple[int, str] | None:
    """Wait for every rank; on the first failure stop the others. Returns (rank, error) or None."""
    previous = signal.signal(signal.SIGTERM, lambda *_: _forward(procs, signal.SIGTERM))
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank = failed[0]
                stop(procs)
                return rank, rank_error(ranks_dir, rank, codes[rank])
            if all(code == 0 for code in codes):
                return None
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C reached every rank too: let them save and say so, then pass it on
        for proc in procs:
            proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _forward(procs: list[subprocess.Popen], signum: int) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signum)


def stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM the ranks still alive (they record ``interrupted``), SIGKILL whoever hangs in a collective."""
    _forward(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rank_error(ranks_dir: Path, rank: int, code: int) -> str:
    path = ranks_dir / f"rank{rank}.error"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    return f"exited with code {code}"


# -- a worker ------------------------------------------------------------------------------------------
def worker(run_dir: Path) -> int:
    from sparse_lab.experiment import run
    from sparse_lab.logs import quiet_third_party_logs

    quiet_third_party_logs()
    cfg = OmegaConf.load(run_dir / RANKS_DIR / "config.yaml")
    try:
        run(cfg, run_dir)
    except RunInterrupted as exc:  # SIGINT / SIGTERM: rank 0's results.json says "interrupted"
        return exc.exit_code
    except BaseException as exc:
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        (run_dir / RANKS_DIR / f"rank{global_rank()}.error").write_text(message.splitlines()[0] if message else "")
        if isinstance(exc, UserError):
            print(f"error: {message}", file=sys.stderr)
            return 2
        raise
    return 0


# -- rank agreement ------------------------------------------------------------------------------------
def mask_digest(masks: dict[str, torch.Tensor], shapes: list | tuple = ()) -> str:
    """A hash of every mask's bits, in name order, and of the parameters' shapes (structured methods
    narrow layers): equal digests mean bit-identical masks on identically shaped models."""
    digest = hashlib.sha256(repr(list(shapes)).encode())
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].detach().to("cpu", torch.bool).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class MaskAgreement(pl.Callback):
    """Checks after every training epoch, and at the end of each fit, that every rank holds the same
    masks; a difference stops the run naming the step. ``report()`` is what results.json records."""

    def __init__(self, method):
        self.method = method
        self.checks = 0
        self.digests: list[str] = []

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size <= 1 or not torch.distributed.is_initialized():
            return
        digest = mask_digest(self.method.masks, [(n, tuple(p.shape)) for n, p in pl_module.named_parameters()])
        gathered = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, digest)
        self.checks += 1
        self.digests = list(gathered)
        if len(set(gathered)) > 1:
            raise RuntimeError(f"masks differ between ranks at step {trainer.global_step}: digests {gathered}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module)

    def report(self, world_size: int) -> dict:
        return {"world_size": world_size, "mask_checks": self.checks, "mask_digests": self.digests}


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1])))
