"""Named geometries for model families."""

from __future__ import annotations

from sparse_lab.errors import UserError


def resolve_preset(presets: dict[str, dict], preset: str | None, overrides: dict) -> dict:
    """A preset's geometry with explicit (non-None) keyword arguments taking precedence."""
    if preset is None:
        base = {}
    elif preset in presets:
        base = dict(presets[preset])
    else:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return base
