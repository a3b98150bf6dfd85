"""A Messages API stand-in that can also misbehave: raw bodies (malformed JSON, HTML) and hanging replies.

Script items, served in order to `POST /v1/messages` (then 500 with `x-should-retry: false`):
  dict                        200 with that JSON body
  (status, dict)              that status with that JSON body, `retry-after-ms: 10` (fast SDK retries)
  ("raw", status, text)       that status with `text` as the body, sent as application/json
  ("hang", seconds)           read the request, answer nothing for `seconds`, then close
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FlakyAPI:
    def __init__(self, script: list | None = None) -> None:
        self.script: deque = deque(script or [])
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                with api._lock:
                    api.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                         "body": raw.decode("utf-8", "replace")})
                    item = api.script.popleft() if api.script else None
                headers = {"content-type": "application/json"}
                if isinstance(item, tuple) and item[0] == "hang":
                    time.sleep(item[1])
                    self.close_connection = True
                    return
                if item is None:
                    status, text = 500, json.dumps({"type": "error", "error": {"type": "api_error",
                                                                               "message": "script exhausted"}})
                    headers["x-should-retry"] = "false"
                elif isinstance(item, tuple) and item[0] == "raw":
                    status, text = item[1], item[2]
                elif isinstance(item, tuple):
                    status, text = item[0], json.dumps(item[1])
                    headers["retry-after-ms"] = "10"
                else:
                    status, text = 200, json.dumps(item)
                data = text.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def push(self, *items: Any) -> None:
        self.script.extend(items)

    def __enter__(self) -> "FlakyAPI":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
