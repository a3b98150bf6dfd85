"""A small Messages API server of our own, for driving the real `anthropic` client in tests.

`FakeMessagesAPI` serves `POST /v1/messages` on 127.0.0.1 (a free port) from a SCRIPT of replies,
in order: each is a JSON message body (a dict, answered 200), a tuple
`(status_code, error_body)` / `(status_code, error_body, headers)`, or one that misbehaves:
`("raw", status_code, text)` sends `text` as the body (malformed JSON, an HTML error page) labelled
application/json, `("hang", seconds)` reads the request and answers nothing for that long, then
closes the connection. Error replies carry
`retry-after-ms: 10` unless their headers say otherwise, so the SDK's own retries are fast (the SDK
honours `retry-after-ms` before its exponential backoff). When the script runs out the server
answers 500 with `x-should-retry: false`, so a test fails fast instead of hanging.

Every request is recorded in `requests` as `{"method", "path", "headers" (lower-case names), "body"
(parsed JSON), "raw" (the body's text)}`;
`responses` records what was sent back (status, headers, raw body text).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_MODEL = "claude-sonnet-4-6"
_ids = itertools.count(1)


def usage(input_tokens: int = 100, output_tokens: int = 20, cache_read_input_tokens: int = 0,
          cache_creation_input_tokens: int = 0) -> dict:
    """A `usage` object of the real shape."""
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_read_input_tokens": cache_read_input_tokens,
            "cache_creation_input_tokens": cache_creation_input_tokens,
            "service_tier": "standard"}


def message(content: list[dict], *, stop_reason: str = "end_turn", usage_: dict | None = None,
            model: str = DEFAULT_MODEL) -> dict:
    """A full Messages API response body."""
    return {"id": f"msg_fake{next(_ids):06d}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": usage_ if usage_ is not None else usage()}


def tool_use_reply(blocks: list, usage: dict | None = None, *, text: str | None = None,
                   model: str = DEFAULT_MODEL) -> dict:
    """A `tool_use` reply; `blocks` are `(name, input)` pairs or ready `tool_use` dicts."""
    content: list[dict] = [{"type": "text", "text": text}] if text else []
    for b in blocks:
        if isinstance(b, dict):
            content.append({"type": "tool_use", "id": f"toolu_fake{next(_ids):06d}", **b})
        else:
            name, inp = b
            content.append({"type": "tool_use", "id": f"toolu_fake{next(_ids):06d}", "name": name, "input": inp})
    return message(content, stop_reason="tool_use", usage_=usage, model=model)


def text_reply(text: str, usage: dict | None = None, *, stop_reason: str = "end_turn",
               model: str = DEFAULT_MODEL) -> dict:
    """A plain text reply (no tool use)."""
    return message([{"type": "text", "text": text}], stop_reason=stop_reason, usage_=usage, model=model)


def error_reply(status: int = 529, error_type: str = "overloaded_error", msg: str = "Overloaded",
                headers: dict | None = None) -> tuple:
    """An API error reply, e.g. 529 overloaded (the default)."""
    body = {"type": "error", "error": {"type": error_type, "message": msg}}
    return (status, body, headers) if headers is not None else (status, body)


class FakeMessagesAPI:
    """A threaded HTTP server that plays a script of Messages API replies; use as a context manager."""

    def __init__(self, script: list | None = None) -> None:
        self.script: deque = deque(script or [])
        self.requests: list[dict] = []
        self.responses: list[dict] = []
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw.decode("utf-8")) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                with api._lock:
                    api.requests.append({"method": "POST", "path": self.path,
                                         "headers": {k.lower(): v for k, v in self.headers.items()},
                                         "body": body, "raw": raw.decode("utf-8", "replace")})
                    item = api.script.popleft() if api.script else None
                headers = {"content-type": "application/json", "request-id": f"req_fake{next(_ids):06d}"}
                if isinstance(item, tuple) and item[0] == "hang":
                    time.sleep(item[1])
                    self.close_connection = True
                    return
                raw_text = item[2] if isinstance(item, tuple) and item[0] == "raw" else None
                if self.path.split("?")[0] != "/v1/messages":
                    status, payload = 404, {"type": "error", "error": {"type": "not_found_error", "message": "no such path"}}
                    headers["x-should-retry"] = "false"
                elif item is None:
                    status, payload = 500, {"type": "error", "error": {"type": "api_error", "message": "fake script exhausted"}}
                    headers["x-should-retry"] = "false"
                elif raw_text is not None:
                    status, payload = item[1], None
                elif isinstance(item, tuple):
                    status, payload = item[0], item[1]
                    extra = item[2] if len(item) > 2 else {"retry-after-ms": "10"}
                    headers.update({k.lower(): str(v) for k, v in extra.items()})
                else:
                    status, payload = 200, item
                text = raw_text if raw_text is not None else json.dumps(payload)
                data = text.encode("utf-8")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with api._lock:
                    api.responses.append({"status": status, "headers": headers, "body": text})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def push(self, *replies: Any) -> None:
        """Append replies to the script."""
        self.script.extend(replies)

    def start(self) -> "FakeMessagesAPI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeMessagesAPI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
