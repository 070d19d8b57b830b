"""ServingError: a request the server refuses, with TF Serving's gRPC code and REST status.

The table of which request gets which code is in docs/serving.md.
"""

import grpc

_Code = grpc.StatusCode
# TF Serving's http_server.cc: gRPC status code -> HTTP status.
_HTTP_STATUS = {
    _Code.INVALID_ARGUMENT: 400, _Code.FAILED_PRECONDITION: 400, _Code.OUT_OF_RANGE: 400, _Code.NOT_FOUND: 404,
    _Code.RESOURCE_EXHAUSTED: 429, _Code.ALREADY_EXISTS: 409, _Code.ABORTED: 409, _Code.PERMISSION_DENIED: 403,
    _Code.UNAUTHENTICATED: 401, _Code.UNIMPLEMENTED: 501, _Code.UNAVAILABLE: 503, _Code.DEADLINE_EXCEEDED: 504,
    _Code.CANCELLED: 499,
}


class ServingError(ValueError):
  """A request the server refuses, with its gRPC status code and (derived or explicit) HTTP status."""

  def __init__(self, code, message, http_status=None):
    super().__init__(message)
    self.code = code
    self.message = message
    self.http_status = http_status or _HTTP_STATUS.get(code, 500)


def invalid(message):
  """An INVALID_ARGUMENT ServingError, the code of most malformed requests."""
  return ServingError(_Code.INVALID_ARGUMENT, message)


def snippet(value, limit=80):
  """A short printable form of a client's value, for error messages."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."
