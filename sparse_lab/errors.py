"""Errors a user can cause. The CLI prints them as one line and exits non-zero, no traceback."""


class UserError(Exception):
    """Bad input: an unknown option, an impossible value, a missing dataset, a corrupt file."""

    def __init__(self, message: str = "", *args):
        # Raised in a DataLoader worker, torch re-raises it in the main process with the worker's
        # traceback as its message; keep the original message (its last line) so it stays one line.
        if isinstance(message, str) and message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
        super().__init__(message, *args)


class IncompatibleError(UserError):
    """A combination the tool does not support by design (e.g. a method that needs structure a model
    lacks); the test of every model x method skips these, so the message must say why."""


def check_range(name: str, value: float, low: float, high: float, *, high_inclusive: bool = False) -> float:
    """Return ``value`` as a float if ``low <= value < high`` (or ``<= high``), else raise a UserError."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}") from None
    upper_ok = value <= high if high_inclusive else value < high
    if not (low <= value and upper_ok):
        bracket = "]" if high_inclusive else ")"
        raise UserError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value:g}")
    return value


class RunInterrupted(BaseException):
    """A run stopped by a signal: SIGINT (Ctrl-C) or SIGTERM (what SLURM sends before a time limit).

    A BaseException, as KeyboardInterrupt, so that no ``except Exception`` swallows it; not a
    KeyboardInterrupt, which Lightning turns into ``sys.exit(1)``. The exit code is the shell's
    convention, 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int, run_dir=None):
        super().__init__(signum)
        self.signum = int(signum)
        self.run_dir = run_dir  # set by the run that was interrupted: where `resume=` points

    @property
    def signal_name(self) -> str:
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {self.signal_name}"
