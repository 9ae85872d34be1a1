"""Errors a user can cause. The CLI prints them as one line and exits non-zero, no traceback."""


class UserError(Exception):
    """Bad input: an unknown option, an impossible value, a missing dataset, a corrupt file."""


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
