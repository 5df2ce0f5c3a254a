"""What every answer of the API shares: JSON errors (never an HTML page or a stack trace) and
the security headers of a JSON API."""

import json
import logging

from flask import jsonify
from flask.json.provider import DefaultJSONProvider
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


class SecurityHeaders:
    """WSGI middleware (Flask's documented place for it: ``app.wsgi_app``) that adds
    SECURITY_HEADERS to every answer, whichever part of the app made it.

    No view sets any of them. Added to the WSGI header list on its way to the server, they skip
    werkzeug's check of each header's text, which an ``after_request`` hook's ``headers.extend``
    ran on every response: a few microseconds per request, for four constant headers."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        def start_with_headers(status, headers, exc_info=None):
            return start_response(status, [*headers, *SECURITY_HEADERS], exc_info)

        return self.wsgi_app(environ, start_with_headers)


class CompactJSONProvider(DefaultJSONProvider):
    """Flask's JSON answers, byte for byte, with the compact encoder built once: Flask calls
    json.dumps with options on every answer, which builds a new encoder each time (about a
    tenth of a one-record prediction's own cost). Debug mode's indented answers are Flask's."""

    def __init__(self, app):
        super().__init__(app)
        self._encoder = json.JSONEncoder(
            default=self.default, ensure_ascii=self.ensure_ascii, sort_keys=self.sort_keys, separators=(",", ":")
        )

    def response(self, *args, **kwargs):
        if (self.compact is None and self._app.debug) or self.compact is False:
            return super().response(*args, **kwargs)
        body = self._encoder.encode(self._prepare_response_obj(args, kwargs))
        return self._app.response_class(body + "\n", mimetype=self.mimetype)
