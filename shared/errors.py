"""Pipeline errors: each carries a machine-readable code that maps to a seed §5.3 exit code."""

from __future__ import annotations

from shared.names import EXIT_CODES, ErrorCode, ExitCode


class PipelineError(Exception):
    """An expected failure with a message meant for the user."""

    code: ErrorCode = ErrorCode.GENERAL

    def __init__(self, message: str, *, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.suggestion = suggestion

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES[self.code]


class InsufficientDataError(PipelineError):
    code = ErrorCode.INSUFFICIENT_DATA

    def __init__(self, message: str, *, current: int, required: int) -> None:
        super().__init__(message, suggestion="Import more traces or lower FINETUNE_MIN_QUALITY.")
        self.current = current
        self.required = required


class ModelNotFoundError(PipelineError):
    code = ErrorCode.MODEL_NOT_FOUND


class BackendUnavailableError(PipelineError):
    code = ErrorCode.BACKEND_UNAVAILABLE


class OutOfMemoryError(PipelineError):
    code = ErrorCode.OOM

    def __init__(self, message: str) -> None:
        super().__init__(message, suggestion="Reduce batch_size or max_seq_length")


class HandedOverError(PipelineError):
    """Not a failure: training stopped at a checkpoint because its worker is shutting down."""

    code = ErrorCode.HANDED_OVER


class CancelledError(PipelineError):
    code = ErrorCode.CANCELLED

    def __init__(self, message: str = "Cancelled by request") -> None:
        super().__init__(message)
