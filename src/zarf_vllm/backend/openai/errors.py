"""Errors in the OpenAI wire form ({"error": {"message", "type", "param", "code"}}).

vLLM's serving layer answers its own errors in this form (its `ErrorResponse`); the refusals
this package makes itself (auth, admission, health) use the same fields, so a client sees one
shape whatever refused it. Status codes map to the gRPC code names the metrics and logs use for
both APIs, so one dashboard counts `RESOURCE_EXHAUSTED` whichever API was over the cap.
"""

from __future__ import annotations

from http import HTTPStatus

import grpc
from starlette.responses import JSONResponse

# The HTTP answer to each refusal the shared call tracker makes.
HTTP_STATUS_OF = {
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
}

_CODE_OF = {
    HTTPStatus.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    HTTPStatus.UNAUTHORIZED: grpc.StatusCode.UNAUTHENTICATED,
    HTTPStatus.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    HTTPStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    HTTPStatus.METHOD_NOT_ALLOWED: grpc.StatusCode.UNIMPLEMENTED,
    HTTPStatus.TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    HTTPStatus.NOT_IMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    HTTPStatus.SERVICE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_of(status: int) -> grpc.StatusCode:
    """The gRPC code name an HTTP status is counted under."""
    if status < 400:
        return grpc.StatusCode.OK
    try:
        return _CODE_OF[HTTPStatus(status)]
    except (KeyError, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL


def error_response(
    status: HTTPStatus, message: str, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    # The fields of vLLM's ErrorResponse, written out rather than imported: the first /health
    # probe comes while the model loads, and importing vLLM on the event loop then would stall
    # every answer for seconds.
    error = {"message": message, "type": _type_of(status), "param": None, "code": int(status)}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _type_of(status: HTTPStatus) -> str:
    # The names OpenAI's own API and clients use (openai.RateLimitError, ...).
    names = {
        HTTPStatus.UNAUTHORIZED: "AuthenticationError",
        HTTPStatus.TOO_MANY_REQUESTS: "RateLimitError",
        HTTPStatus.SERVICE_UNAVAILABLE: "ServiceUnavailableError",
    }
    return names.get(status, status.phrase.replace(" ", "") + "Error")
