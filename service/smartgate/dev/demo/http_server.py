"""The threaded HTTP server the demo upstream (and the tests' stand-ins) listen with.

``ThreadingHTTPServer`` listens with a backlog of 5: when Envoy opens more connections than that
at once, the kernel drops the extra SYNs and the retransmission (one second later) arrives after
Envoy's 1 s connect timeout, which the client sees as a 503 that no component decided.
"""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class DemoHTTPServer(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True
