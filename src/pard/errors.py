"""Typed exceptions. The CLI turns any :class:`PardError` into one readable line (traceback only with ``--debug``)."""


class PardError(Exception):
    """Base class of every error this library raises on bad input."""


class InvalidArgumentError(PardError, ValueError):
    """An argument is out of range or inconsistent (e.g. K < 1, empty prompt, unknown method)."""


class VocabularyMismatchError(PardError):
    """Target and draft do not share a tokenizer / vocabulary, so draft tokens mean nothing to the target."""


class NotAParallelDraftError(PardError):
    """A draft without a mask token (``pard_token`` in its config) was asked to draft in parallel."""


class PromptTooLongError(PardError):
    """A prompt does not fit in the model's context window."""


class ModelLoadError(PardError):
    """A model or tokenizer could not be found or loaded."""


class DataError(PardError):
    """Training or benchmark data is missing, empty or malformed (messages name the file and line)."""


class OutputError(PardError):
    """An output location cannot or may not be written (not empty, not writable, in use by another process)."""
