"""API errors: one exception type carrying a gRPC status code and a message a
person can act on (turned into a gRPC status by pinet.runtime.servicer)."""

from __future__ import annotations

from collections.abc import Callable

import grpc


class ApiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _with_code(code: grpc.StatusCode) -> Callable[[str], ApiError]:
    def make(message: str) -> ApiError:
        return ApiError(code, message)

    return make


# One constructor per status the API answers with: raise invalid("spec.x: ...").
invalid = _with_code(grpc.StatusCode.INVALID_ARGUMENT)
not_found = _with_code(grpc.StatusCode.NOT_FOUND)
already_exists = _with_code(grpc.StatusCode.ALREADY_EXISTS)
failed_precondition = _with_code(grpc.StatusCode.FAILED_PRECONDITION)
exhausted = _with_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
permission_denied = _with_code(grpc.StatusCode.PERMISSION_DENIED)
out_of_range = _with_code(grpc.StatusCode.OUT_OF_RANGE)
aborted = _with_code(grpc.StatusCode.ABORTED)
unauthenticated = _with_code(grpc.StatusCode.UNAUTHENTICATED)
unavailable = _with_code(grpc.StatusCode.UNAVAILABLE)
