"""The one place that maps errors to HTTP: `{"error": <stable code>, "message": ...}` with the right status.

Never a traceback: anything unexpected is logged with its stack here and answered 500 `internal_error`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ringkv import errors
from ringkv.net.transport import RemoteError, TransportError

log = logging.getLogger("ringkv.api")

# First match wins, so subclasses come before their bases.
STATUS_BY_ERROR: tuple[tuple[type[errors.RingkvError], int], ...] = (
    (errors.PayloadTooLargeError, 413),
    (errors.UnsupportedMediaTypeError, 415),
    (errors.RequestTimeoutError, 408),
    (errors.RequestError, 400),
    (errors.InvalidContextError, 400),
    (errors.NotFoundError, 404),
    (errors.TooManySiblingsError, 409),
    (errors.ShuttingDownError, 503),
    (errors.NotReadyError, 503),
    (errors.NotReplicaError, 503),
    (errors.QuorumUnavailableError, 503),
    (errors.EngineClosedError, 503),
    (errors.CorruptionError, 500),
    (errors.StorageError, 503),
    (TransportError, 503),
)

# Codes for errors aiohttp raises itself (routing, body size).
CODE_BY_STATUS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


# A peer's error arrives as a RemoteError carrying the peer's code; answer as the peer would have.
STATUS_BY_REMOTE_CODE = {
    kind.code: status for kind, status in STATUS_BY_ERROR if not issubclass(kind, errors.RequestError)
}


def status_of(error: errors.RingkvError) -> int:
    if isinstance(error, RemoteError):
        return STATUS_BY_REMOTE_CODE.get(error.code, 502)
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers=headers)


ERROR_CODE = web.ResponseKey("error_code", str)  # an error response carries its code here too (for the metrics)


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    response = json_response({"error": code, "message": message, **extra}, status)
    response[ERROR_CODE] = code
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.RingkvError as e:
        status = status_of(e)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, e)
        return error_response(status, e.code, str(e), **e.details())
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = CODE_BY_STATUS.get(e.status, "http_error")
        message = (e.text or e.reason) if e.status == 413 else e.reason
        response = error_response(e.status, code, message)
        if e.status == 405:
            allow = e.headers.get("Allow")
            if allow:
                response.headers["Allow"] = allow
        return response
    except Exception:
        log.exception("%s %s failed unexpectedly", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the node's log")
