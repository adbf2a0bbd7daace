"""CloudLand's shared core: settings, errors, ids, logging and the tree arithmetic."""

__version__ = "0.1.0"
