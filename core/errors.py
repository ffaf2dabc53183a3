"""Exceptions that carry a message a user can act on.

Every failure a user can cause or fix (bad field, no scenes, network down, a broken cube) raises
a subclass of :class:`FieldFlowError`. The CLI prints its message as one line and exits non-zero;
the app shows it as an error box. Anything else is a bug and may surface as a traceback.
"""

from __future__ import annotations


class FieldFlowError(Exception):
    """Base class: ``str(err)`` is a complete sentence telling what is wrong and what to do."""


class InputError(FieldFlowError, ValueError):
    """Something the user gave us (a file, a date, an option) is not usable."""


class CheckpointChanged(InputError):
    """The model checkpoint at a path is no longer the version a computation pinned (replaced
    meanwhile, or another model at that path on a cluster's worker)."""


class FieldError(InputError):
    """The field outline is not a usable polygon."""


class CubeError(InputError):
    """A cube file is missing, unreadable or not in the cube format."""


class NoScenesError(FieldFlowError):
    """A search found no acquisitions for the field and period."""


class NetworkError(FieldFlowError):
    """A remote service could not be reached or kept failing after retries."""


class AccessDeniedError(NetworkError):
    """A remote service refused access (HTTP 401/403), e.g. a missing subscription key."""


class ClusterError(NetworkError):
    """The Dask scheduler cannot be reached, has no workers, or lost the work."""


class OutputError(FieldFlowError):
    """A file the user asked for cannot be written there (a folder, a device, no permission,
    the input itself, disk full)."""
