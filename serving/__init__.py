"""Progressive delivery of scikit-learn models served by MLServer under Seldon Core."""

__version__ = "0.1.0"
