"""taskmasterd, the supervisor daemon. `__version__` is the one place the version is written
(pyproject.toml reads it; taskmasterctl reports it)."""
__version__ = "0.1.0"
