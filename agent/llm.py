"""The one module that imports `anthropic`: a thin Messages API client with secret-safe errors.

* The API key comes from the environment variable `ANTHROPIC_API_KEY` only; it is handed to the SDK
  and never stored in, returned by or formatted into anything of ours.
* Retries are the SDK's own (exponential backoff with jitter, honouring `retry-after(-ms)`; it
  retries connection errors, 408, 409, 429 and 5xx including 529 overloaded). We only choose
  `max_retries` (default 4) and the per-request `timeout` (default 120 s).
* Any SDK/API failure that survives those retries becomes `ModelUnavailable` with a one-line message
  (class, HTTP status, the API's own error type and message), scrubbed of the key.
* A 200 response whose body is not JSON, or not a message, becomes `ProposalFailed` (the loop records
  `proposal_failed` and goes on): one garbled reply is not a reason to stop an overnight run.
* Responses are returned as plain dicts (`Message.model_dump(mode="json")`), so nothing else in sealab
  depends on SDK types.
"""

from __future__ import annotations

import os
from typing import Any

import anthropic

from agent.proposal import ModelUnavailable, ProposalFailed, one_line

API_KEY_ENV = "ANTHROPIC_API_KEY"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
DEFAULT_MAX_RETRIES = 4
DEFAULT_TIMEOUT_S = 120.0


class MessagesClient:
    """`messages.create` through the real SDK; raises `ModelUnavailable` on any API failure."""

    def __init__(self, *, base_url: str | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        key = (os.environ.get(API_KEY_ENV) or "").strip()
        if not key:
            raise ModelUnavailable(f"{API_KEY_ENV} is not set")
        self._secrets = (key,)
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        self.max_retries = max_retries
        self.timeout = timeout
        try:
            self._client = anthropic.Anthropic(api_key=key, base_url=self.base_url,
                                               max_retries=max_retries, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - anything the SDK raises at construction
            raise ModelUnavailable(self._describe(exc)) from exc

    def __repr__(self) -> str:
        return f"MessagesClient(base_url={self.base_url!r}, max_retries={self.max_retries}, timeout={self.timeout})"

    def create(self, **params: Any) -> dict:
        """One Messages API call (`model`, `max_tokens`, `system`, `tools`, `messages`, ...)."""
        try:
            message = self._client.messages.create(**params)
            return message.model_dump(mode="json")
        except anthropic.AnthropicError as exc:
            raise ModelUnavailable(self._describe(exc)) from exc
        except ValueError as exc:  # the SDK does not wrap a body that is not JSON (JSONDecodeError)
            raise ProposalFailed(self._scrub(one_line(
                f"Anthropic API returned a malformed response ({type(exc).__name__}): {exc}", 300))) from exc

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, anthropic.APITimeoutError):
            text = f"Anthropic API timed out after {self.timeout:g} s and {self.max_retries} retries"
        elif isinstance(exc, anthropic.APIConnectionError):
            text = f"Anthropic API unreachable after {self.max_retries} retries: {exc}"
        elif isinstance(exc, anthropic.APIStatusError):
            kind, msg = "", str(exc)
            body = exc.body
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                kind = str(body["error"].get("type") or "")
                msg = str(body["error"].get("message") or msg)
            text = f"Anthropic API error HTTP {exc.status_code}" + (f" {kind}" if kind else "") + f": {msg}"
        else:
            text = f"Anthropic API failure ({type(exc).__name__}): {exc}"
        return self._scrub(one_line(text, 300))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
        return text
