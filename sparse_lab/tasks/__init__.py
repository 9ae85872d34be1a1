"""Tasks: LightningModules that wrap a plain model with its loss, metrics and optimisation."""
