"""lmforge: a workbench for generative language modelling."""

__version__ = "0.1.0"
