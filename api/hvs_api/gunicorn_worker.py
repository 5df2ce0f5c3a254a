"""The gunicorn worker class the API runs under: gevent's, made safe against slow and clumsy clients.

A sync worker is a process that reads one request at a time: four clients that send headers
and then one byte of body every few seconds held both of the lab's workers until gunicorn
killed them, and nobody else was answered meanwhile. gevent's worker gives each connection a
greenlet instead, so a connection that waits costs some memory, not a process; the model call
is CPU-bound and still runs one at a time per worker, on one inference thread.

On top of gevent's worker this class:

- bounds what a connection may hold: a request's headers must arrive within ``keepalive``
  seconds (gunicorn's own rule for async workers), and every read or write of the body or
  the answer must make progress within ``CLIENT_IDLE_SECONDS``, after which the app answers
  400 ``body_incomplete`` or the connection is closed. ``worker_connections`` caps the
  connections of one worker.
- counts the connections it holds in ``hvs_api_connections_in_progress``, the first thing to
  look at when answers slow down while the CPU is idle (see the runbook).
- reads and discards a body the app did not read (a 413, say) before closing, up to
  ``DISCARD_LIMIT_BYTES`` and for at most ``DISCARD_SECONDS``. Most HTTP clients (urllib,
  requests, httpx) send the whole body before they read a byte of the answer; closing a
  socket with unread data makes the kernel reset the connection, and such a client then sees
  ``Broken pipe`` instead of the JSON 413 it was sent.
"""

import gevent
from gevent import socket
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker
from hvs_settings import ApiSettings
from prometheus_client import Gauge

# A client that sends nothing (or reads nothing) for this long mid-request is dropped.
CLIENT_IDLE_SECONDS = ApiSettings.from_env().client_idle_seconds
# A refused body is read to its end, up to this much and this long, so that its sender gets the answer.
DISCARD_LIMIT_BYTES = 64 * 1024 * 1024
DISCARD_SECONDS = 15.0
_CHUNK = 64 * 1024
_NEXT_LOOP_ITERATION = 1e-6  # seconds: any sleep above 0 waits for the loop's next iteration.

CONNECTIONS = Gauge(
    "hvs_api_connections_in_progress",
    "Client connections the API's workers hold open: being read, served, or idle between requests",
    multiprocess_mode="livesum",
)
# What the gauge above is measured against: each live worker's worker_connections, summed, so
# a panel can draw open connections against what the workers can hold.
CAPACITY = Gauge(
    "hvs_api_connections_capacity",
    "Client connections the API's live workers can hold open at most (worker_connections per worker, summed)",
    multiprocess_mode="livesum",
)


def discard_unread_body(body, limit: int = DISCARD_LIMIT_BYTES, seconds: float = DISCARD_SECONDS) -> bool:
    """Read what is left of a request body and drop it; True when the body ended.

    Stops at ``limit`` bytes or after ``seconds``, whichever comes first, and then returns
    False: the connection must be closed with the rest unread.
    """
    discarded = 0
    with gevent.Timeout(seconds, False):
        while discarded < limit:
            chunk = body.read(min(_CHUNK, limit - discarded))
            if not chunk:
                return True
            discarded += len(chunk)
    return False


class SlowClientSafeWorker(GeventWorker):
    """gevent's worker with a read deadline per connection, a connection gauge and a body discard."""

    def patch(self):
        # gunicorn.conf.py patched the standard library in the master, before the app loaded,
        # and workers inherit it (gevent's worker would patch again, and warn that it did).
        # The listening sockets came from the master as gunicorn's wrappers: serve them through gevent.
        self.sockets = [socket.socket(s.FAMILY, socket.SOCK_STREAM, fileno=s.sock.detach()) for s in self.sockets]
        CAPACITY.set(self.worker_connections)

    def handle(self, listener, client, addr):
        # GeventWorker.handle would make the socket blocking without a timeout: a client that
        # stops sending mid-body would hold its greenlet for ever.
        client.settimeout(CLIENT_IDLE_SECONDS)
        CONNECTIONS.inc()
        try:
            AsyncWorker.handle(self, listener, client, addr)
        finally:
            CONNECTIONS.dec()

    def handle_request(self, listener_name, req, sock, addr):
        try:
            super().handle_request(listener_name, req, sock, addr)
        finally:
            # Also when the answer closes the connection (StopIteration): that is when an
            # unread body would turn into a reset.
            body_ended = self._discard_rest(req)
        if not body_ended:
            # On a kept-alive connection gunicorn would read the rest itself, without a limit.
            raise StopIteration("the request body was too long to discard")
        # Let the worker's other connections have their turn. A busy keep-alive client often
        # has its next request waiting by the time this one is answered, and a greenlet only
        # yields when a read would block: without this, one connection kept the worker to
        # itself while the others waited (p75 of 270 ms under wrk's 16 connections, p50 11 ms).
        # A sleep above 0 resumes after the event loop's next poll of the other sockets; a
        # sleep of 0 may resume before it.
        gevent.sleep(_NEXT_LOOP_ITERATION)

    def _discard_rest(self, req) -> bool:
        if req.body is None:
            return True
        try:
            return discard_unread_body(req.body)
        except Exception:  # noqa: BLE001 A body being thrown away may fail in any way; the connection closes.
            self.log.debug("could not discard the rest of a request body", exc_info=True)
            return False
