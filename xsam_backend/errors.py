"""The backend's exception tree; every class maps to one HTTP status.

Our exception hierarchy::

    BackendError                      500  our fault; the message is safe to show, no traceback
    ├── BadRequest                    400  the request is malformed (JSON shape, types, sizes)
    │   ├── LabelConfigError          422  the label config is one the backend cannot serve
    │   └── PromptError               400  the interactive context holds no usable prompt
    ├── Unauthorized                  401  basic auth is configured and the request lacks it
    ├── PayloadTooLarge               413  the request body or prompt count is over a limit
    ├── MediaError                    422  a task's image cannot be used
    │   ├── MediaForbidden            403  SSRF guard, path escaping the document root
    │   ├── MediaNotFound             404  the file or URL does not exist
    │   ├── MediaTooLarge             413  over the pixel limit (decompression bombs) or byte limit
    │   └── MediaUnavailable          502  Label Studio or the storage did not answer
    ├── NeedsWeights                  422  the prompt needs X-SAM weights; the fallback engine serves
    ├── LabelStudioApiError           502  Label Studio's REST API refused or did not answer
    ├── BrokerUnavailable             503  Redis/Celery is down; retry later
    └── JobTimeout                    504  the worker did not answer within the time limit

Usage::

    try:
        result = dispatcher.predict(jobs)
    except BackendError as exc:
        return jsonify(exc.to_json()), exc.status

Every error carries a short machine-readable ``code`` and a human message that says what was
expected and what arrived. Errors cross Redis as ``{"code", "message"}`` and are rebuilt with
:func:`error_from_json`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class BackendError(Exception):
    """Base class: an error the backend reports with a status, a code and a message."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, Any]:
        """``{"status", "code", "message"}``, the body of an error response."""
        return {"status": self.status, "code": self.code, "message": self.message}


class BadRequest(BackendError):
    status = 400
    code = "bad_request"


class LabelConfigError(BadRequest):
    status = 422
    code = "unsupported_label_config"


class PromptError(BadRequest):
    status = 400
    code = "bad_prompt"


class Unauthorized(BackendError):
    status = 401
    code = "unauthorized"


class PayloadTooLarge(BackendError):
    status = 413
    code = "payload_too_large"


class MediaError(BackendError):
    status = 422
    code = "media_error"


class MediaForbidden(MediaError):
    status = 403
    code = "media_forbidden"


class MediaNotFound(MediaError):
    status = 404
    code = "media_not_found"


class MediaTooLarge(MediaError):
    status = 413
    code = "media_too_large"


class MediaUnavailable(MediaError):
    status = 502
    code = "media_unavailable"


class NeedsWeights(BackendError):
    status = 422
    code = "needs_weights"


class LabelStudioApiError(BackendError):
    """Label Studio's API refused a request or could not be reached."""

    status = 502
    code = "label_studio_api_error"


class BrokerUnavailable(BackendError):
    status = 503
    code = "broker_unavailable"


class JobTimeout(BackendError):
    status = 504
    code = "job_timeout"


_BY_CODE: dict[str, type[BackendError]] = {
    cls.code: cls
    for cls in (
        BackendError,
        BadRequest,
        LabelConfigError,
        PromptError,
        Unauthorized,
        PayloadTooLarge,
        MediaError,
        MediaForbidden,
        MediaNotFound,
        MediaTooLarge,
        MediaUnavailable,
        NeedsWeights,
        LabelStudioApiError,
        BrokerUnavailable,
        JobTimeout,
    )
}


def error_from_json(data: dict[str, Any]) -> BackendError:
    """Rebuild an error sent as ``{"code", "message"}`` (unknown codes become ``BackendError``)."""
    cls = _BY_CODE.get(str(data.get("code")), BackendError)
    return cls(str(data.get("message", "unknown error")))
