"""Every error the library raises on purpose.

One root, :class:`L2SError`. Each subclass also inherits the builtin that a caller would
naturally catch (``ValueError`` for bad values, ``FileNotFoundError`` for missing files...),
so ``except ValueError`` keeps working for code that does not know about l2s-data.

Messages say what was expected, what came, which sample / file / key, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "L2SError",
    "ConfigError",
    "InputError",
    "PromptTooLongError",
    "LayerIndexError",
    "PositionError",
    "ModelLoadError",
    "DataSourceError",
    "ImageError",
    "BehaviorError",
    "StoreError",
    "StoreNotFoundError",
    "SchemaMismatchError",
    "WriteMismatchError",
    "CorruptManifestError",
    "LeaseHeldError",
    "CorruptChunkError",
    "KeyNotFoundError",
    "EmptySelectionError",
    "SQLRefusedError",
    "SQLTimeoutError",
    "SQLMemoryError",
    "ReferencedRecipeError",
    "ExtractionError",
    "ShardFailedError",
    "JobSubmissionError",
    "PredictorMismatchError",
    "RunNotFoundError",
    "TrainingError",
    "JudgeError",
    "EvaluationError",
    "ServeRequestError",
    "ServeError",
]


class L2SError(Exception):
    """Root of every error raised on purpose by l2s-data."""


# --- configuration and user input -------------------------------------------------------


class ConfigError(L2SError, ValueError):
    """A config file or config object is invalid (unknown key, bad value, bad type)."""


class InputError(L2SError, ValueError):
    """A model input cannot be processed as asked."""


class PromptTooLongError(InputError):
    """A formatted sequence is longer than the model's context window."""


class LayerIndexError(InputError, IndexError):
    """A decoder layer index is outside ``[0, num_layers)``."""


class PositionError(InputError):
    """A named token position does not exist in the sequence (e.g. no completion)."""


class ModelLoadError(L2SError, OSError):
    """A directory holds no model that l2s-data supports, or it cannot be loaded."""


# --- data sources -----------------------------------------------------------------------


class DataSourceError(L2SError, ValueError):
    """A data set file is malformed, missing or inconsistent."""


class ImageError(DataSourceError):
    """An image is missing, unreadable, or outside the data set root."""


class BehaviorError(L2SError, KeyError):
    """A behavior or preset is unknown, malformed, or has no pair for a category."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# --- store ------------------------------------------------------------------------------


class StoreError(L2SError, RuntimeError):
    """The activation store refused an operation or found it inconsistent."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store exists at the given URL (and creation was not asked for)."""


class SchemaMismatchError(StoreError, ValueError):
    """A Parquet part or manifest does not match the pinned Arrow schema."""


class WriteMismatchError(StoreError, ValueError):
    """A write's shape, dtype or row count disagrees with what the shard declared."""


class CorruptManifestError(StoreError, ValueError):
    """A manifest file fails its checksums or names a location outside the writer's rules."""


class LeaseHeldError(StoreError):
    """Another maintenance operation holds the store's lease; retry after it ends or expires."""


class CorruptChunkError(StoreError):
    """A stored chunk's bytes do not match their checksum."""


class KeyNotFoundError(StoreError, KeyError):
    """A requested (recipe, view, position, layer, sample) key is not committed."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class EmptySelectionError(StoreError, ValueError):
    """A ``where`` selection (loader, training, validation, evaluation) selects no stored rows."""


class SQLRefusedError(StoreError, PermissionError):
    """A SQL statement tried to write, read files, attach, install or change settings."""


class SQLTimeoutError(StoreError, TimeoutError):
    """A catalog statement ran past its time limit and was interrupted."""


class SQLMemoryError(StoreError, MemoryError):
    """A catalog statement needed more memory than the catalog's limit allows."""


class ReferencedRecipeError(StoreError):
    """A recipe cannot be deleted while runs still reference it."""


class OutsideStoreError(StoreError):
    """A path the store would act on is a symbolic link, or lies under one: the store reads
    and deletes only real files and folders inside its root."""


class StoreAccessError(StoreError, PermissionError):
    """The store's filesystem refused access (credentials, permissions, a missing bucket)."""


# --- extraction -------------------------------------------------------------------------


class ExtractionError(L2SError, RuntimeError):
    """An extraction job could not proceed."""


class ShardFailedError(ExtractionError):
    """A distributed extraction ended with shards that failed on every attempt.

    ``shards`` names them; ``report`` is the run's report (the committed shards stay).
    """

    def __init__(self, message: str, *, report=None, shards: tuple[str, ...] = ()):
        super().__init__(message)
        self.report = report
        self.shards = shards


class JobSubmissionError(L2SError, RuntimeError):
    """A Ray job could not be submitted, found, or controlled through the Jobs API."""


# --- steering and training --------------------------------------------------------------


class PredictorMismatchError(L2SError, ValueError):
    """A saved predictor does not fit what it is used with (dims, recipe, layers, file)."""


class RunNotFoundError(L2SError, KeyError):
    """A run id or sweep id names no row of the store's ``runs`` table."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TrainingError(L2SError, RuntimeError):
    """Training could not proceed (a non-finite loss, a failed sweep trial)."""


# --- evaluation -------------------------------------------------------------------------


class JudgeError(L2SError, RuntimeError):
    """A judge (guard or quality model, local or an HTTP endpoint) failed or answered out of form."""


class EvaluationError(L2SError, RuntimeError):
    """A distributed evaluation could not start its workers, or ended with units that failed on
    every attempt (``units`` names them; the committed rows stay)."""

    def __init__(self, message: str, *, units: tuple[str, ...] = ()):
        super().__init__(message)
        self.units = units


# --- serving ----------------------------------------------------------------------------


class ServeRequestError(InputError):
    """A chat request the server refuses: the HTTP ``status`` and the OpenAI error fields
    (``type``, ``code``, ``param``) it is answered with."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_value", param: str | None = None,
                 type: str = "invalid_request_error"):  # noqa: A002 - the OpenAI field's name
        super().__init__(message)
        self.status, self.code, self.param, self.type = status, code, param, type


class ServeError(L2SError, RuntimeError):
    """The service could not start (Ray could not be started or joined, or the application's
    replicas did not come up), or Ray Serve failed to delete it."""
