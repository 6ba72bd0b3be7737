"""A stand-in for the EC2 instance metadata service (IMDSv2) on 127.0.0.1, for spot notices.

Each worker that asks gets its own session token. Once `give_notice_after` seconds have
passed, the next worker to ask for spot/instance-action gets the interruption notice, and
only that one: the others keep hearing 404, as on instances that are not being reclaimed.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterator, List, Optional

NOTICE = {"action": "terminate", "time": "2026-11-30T12:00:00Z"}


class MetadataStandIn:
    """The stand-in server; use as a context manager."""

    def __init__(self, give_notice_after: float) -> None:
        self.give_notice_after = give_notice_after
        self.started = time.monotonic()
        self.tokens: Iterator[int] = itertools.count(1)
        self.issued: List[str] = []
        self.noticed: Optional[str] = None
        self.noticed_at: Optional[float] = None
        self.polls: Dict[str, int] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "MetadataStandIn":
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _reply(self, code: int, body: bytes = b"") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    self._reply(400)
                    return
                with stand_in._lock:
                    token = f"token-{next(stand_in.tokens)}"
                    stand_in.issued.append(token)
                self._reply(200, token.encode())

            def do_GET(self) -> None:
                token = self.headers.get("X-aws-ec2-metadata-token", "")
                if token not in stand_in.issued:
                    self._reply(401)
                    return
                if self.path != "/latest/meta-data/spot/instance-action":
                    self._reply(404)
                    return
                with stand_in._lock:
                    stand_in.polls[token] = stand_in.polls.get(token, 0) + 1
                    due = time.monotonic() - stand_in.started >= stand_in.give_notice_after
                    if due and stand_in.noticed is None:
                        stand_in.noticed, stand_in.noticed_at = token, time.monotonic()
                    chosen = stand_in.noticed == token
                self._reply(200, json.dumps(NOTICE).encode()) if chosen else self._reply(404)

        return Handler
