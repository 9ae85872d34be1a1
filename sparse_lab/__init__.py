"""sparse-lab: train and evaluate dataset x model x sparsity method x hardware target combinations."""

__version__ = "0.1.0"
