"""Errors a user can act on. Stage scripts print these as one line and exit non-zero."""


class FastFluxError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in FastFLUX."""


class ParamsError(FastFluxError):
    """params.yaml is missing, malformed, has an unknown key or a value out of range."""


class ModelFolderError(FastFluxError):
    """A model folder is missing or is not in the layout FastFLUX expects."""
