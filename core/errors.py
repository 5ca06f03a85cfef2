"""The project's own errors: what a user can put right, each said in one line. Anything else is a bug.

Every error a user can cause (a bad path, a file that is not a photo, a setting that does not exist, a full
disk, a model that is not there) is a `UserError`, raised where it is found with a message that names the thing
and says what is wrong. The command line prints those as one `error:` line; any other exception is a bug in this
project and keeps its traceback. Each class also derives from the built-in error it refines (ValueError,
OSError, ...), so `except ValueError` around one still catches it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for or gave; str(err) says what and why, in one line."""


class SettingsError(UserError, ValueError):
    """A setting that does not exist, or a value it cannot take (an unknown preset, batch size below replicas)."""


class ModelError(UserError, ValueError):
    """A model that is not there or cannot be used: no model yet, no such file, not a Keras model."""


class NotFound(UserError, KeyError):
    """No run or model of that name; str(err) is the message, not KeyError's quoted repr of it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunError(UserError, ValueError):
    """A run that cannot do what was asked: it saved no model, or it is still training."""
