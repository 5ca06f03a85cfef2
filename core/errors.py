"""The project's own errors: what a user can put right, each said in one line. Anything else is a bug.

Every error a user can cause (a bad path, a file that is not a photo, a setting that does not exist, a full
disk, a model that is not there, a runs folder in use) is a `UserError`, raised where it is found with a message
that names the thing and says what is wrong. The command line prints those as one `error:` line with exit code 2;
any other exception is a bug in this project and keeps its traceback. Each class also derives from the built-in
error it refines (ValueError, OSError, ...), so `except ValueError` around one still catches it.

    UserError
      SettingsError       a setting that does not exist, or a value it cannot take
      DatasetError        a dataset source that cannot be read at all, or cannot train
      ImageError          one file that cannot become model input (its per-file reason)
      ModelError          a model that is not there or cannot be loaded
        ModelMissing      no model file at that path (also a FileNotFoundError)
      NotFound            no run or model of that name
      RunError            a run that cannot do what was asked
      TrainingInProgress  another training holds the runs folder
      ExportError         an export that cannot be made, or must not be trusted
      WriteError          a file that could not be written (disk full, permission denied, ...)
      CorrectionsError    a corrections file that cannot be used (unreadable, malformed, another dataset's)

This module imports nothing, so that any module can raise these.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user asked for or gave; str(err) says what and why, in one line."""


class SettingsError(UserError, ValueError):
    """A setting that does not exist, or a value it cannot take (an unknown preset, batch size below replicas)."""


class DatasetError(UserError, ValueError):
    """A dataset source that cannot be read at all (missing, not a zip, a zip bomb), or one that cannot train."""


class ImageError(UserError, ValueError):
    """A file that cannot become model input; str(err) is the per-file reason shown to users."""


class ModelError(UserError, ValueError):
    """A model that is not there or cannot be used: no model yet, no such file, not a Keras model."""


class ModelMissing(ModelError, FileNotFoundError):
    """No model file at the path given."""


class NotFound(UserError, KeyError):
    """No run or model of that name; str(err) is the message, not KeyError's quoted repr of it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunError(UserError, ValueError):
    """A run that cannot do what was asked: it saved no model, or it is still training."""


class TrainingInProgress(UserError, RuntimeError):
    """Another training holds this runs folder's lock; the message names the run in progress."""


class ExportError(UserError, ValueError):
    """An export that cannot be made, or one that must not be trusted (missing, corrupt, stale metadata)."""


class WriteError(UserError, OSError):
    """A file could not be written; the message names the file and says what happened, e.g. disk full."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class CorrectionsError(UserError, ValueError):
    """A corrections file that cannot be used: unreadable, malformed, or made for another dataset."""
