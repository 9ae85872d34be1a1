"""Measured latency of a model's forward pass on the machine the run uses (``torch.utils.benchmark``).

``time_call`` times blocks of calls with ``torch.utils.benchmark.Timer`` (which synchronises CUDA
around every block) and reports the median over blocks; the timer runs with the process's thread count (its default is
one thread, which would time a configuration the run never uses). Variants compared with each other are
measured interleaved, round by round, so a change of machine load hits them alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch import nn
from torch.utils import benchmark

MIN_RUN_TIME_S = 0.1  # per measurement: enough blocks for a stable median, small enough for every run
BLOCKS, MIN_BLOCKS = 10, 3  # blocks per measurement aimed at, and the fewest that give a median


def time_call(fn: Callable[[], object], min_run_time: float = MIN_RUN_TIME_S) -> float:
    """Median seconds of one call of ``fn`` (no gradients recorded), over blocks of calls.

    As ``Timer.blocked_autorange``, but with the block size set from one warm call (blocks of about a tenth
    of ``min_run_time``, at least ``MIN_BLOCKS`` blocks). blocked_autorange grows blocks until the timer's
    own overhead is below 0.01% of a block; on a loaded machine that overhead estimate is noisy, and a
    1 ms forward pass got blocks of 1000 calls: 2-3 s per measurement instead of 0.2 s (measured here)."""
    with torch.no_grad():
        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        timer.timeit(1)  # lazy initialisation, allocator growth
        once = max(timer.timeit(1).median, 1e-7)
        number = max(1, int(min_run_time / BLOCKS / once))
        blocks, spent = [], 0.0
        while spent < min_run_time or len(blocks) < MIN_BLOCKS:
            block = timer.timeit(number).median  # seconds per call within this block
            blocks.append(block)
            spent += block * number
        return statistics.median(blocks)


def interleaved(fns: dict, rounds: int = 3, min_run_time: float = MIN_RUN_TIME_S) -> dict:
    """Seconds per call of each variant, one median per round; variants alternate within every round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(time_call(fn, min_run_time))
    return times


def compare_ms(
    models: dict[str, nn.Module], inputs: dict[str, object], rounds: int = 3, min_run_time: float = MIN_RUN_TIME_S
) -> dict[tuple[str, str], list[float]]:
    """Milliseconds per forward pass of every model on every input, one median per round, all interleaved:
    ``{(model name, input name): [ms per round]}``. Models are timed as they are: put modules in eval mode
    first (a loaded ``torch.export`` program refuses ``eval()``: it was traced in the mode it runs in)."""
    calls = {}
    for model_name, model in models.items():
        for input_name, example in inputs.items():
            calls[model_name, input_name] = forward(model, example)
    times = interleaved(calls, rounds, min_run_time)
    return {key: [t * 1e3 for t in values] for key, values in times.items()}


def forward(model: nn.Module, example_input) -> Callable[[], object]:
    """A call of ``model`` on its one input (a tensor, a dict, a batch object: whatever the data gives)."""
    return lambda: model(example_input)
