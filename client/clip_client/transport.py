"""One HTTP session per client, and the retry loop every request goes through."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import aiohttp

from clip_client.codes import IMAGE_FETCH_CODES
from clip_client.errors import ClipServerError, ClipTimeoutError, ClipUnavailableError, error_for
from clip_client.retry import RETRY_STATUSES, RetryPolicy, parse_retry_after

log = logging.getLogger("clip_client")

USER_AGENT = "clip-client/0.1"
# The header the service answers with: the id its log lines about the request carry.
REQUEST_ID_HEADER = "X-Request-ID"
HeaderFactory = Callable[[], dict[str, str]]
BodyFactory = Callable[[], object]


@dataclass(frozen=True, slots=True)
class Answer:
    """A final (non-retryable) HTTP answer: status, decoded JSON body (None if not JSON), the server's request id."""

    status: int
    body: object
    request_id: str | None = None

    def error_code_and_message(self) -> tuple[str, str]:
        """Return the service's `{"error": {"code", "message"}}`, or a generic one."""
        body = self.body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            return str(err.get("code") or ""), str(err.get("message") or f"HTTP {self.status}")
        if isinstance(body, dict) and isinstance(body.get("reason"), str):  # /health when not ready
            return str(body.get("status") or ""), body["reason"]
        return "", f"HTTP {self.status}"

    def json_or_raise(self) -> object:
        """Return the body of a 2xx answer; raise the matching exception for anything else."""
        if 200 <= self.status < 300:
            if self.body is None:
                raise ClipServerError(
                    f"HTTP {self.status} without a JSON body", status=self.status, request_id=self.request_id
                )
            return self.body
        code, message = self.error_code_and_message()
        raise error_for(code, message, self.status, self.request_id)


def _decode(raw: bytes) -> object:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _retryable(status: int, body: object) -> bool:
    if status not in RETRY_STATUSES:
        return False
    # The service's own 502/504 about the image host is a final answer, not a sick server (its 422,
    # the host's 4xx, is not in RETRY_STATUSES at all).
    code, _ = Answer(status, body).error_code_and_message()
    return code not in IMAGE_FETCH_CODES


class Transport:
    """Sends JSON requests with retries; `headers` is called before every attempt (fresh signature)."""

    def __init__(
        self,
        timeout_s: float,
        retry: RetryPolicy,
        base_headers: dict[str, str] | None = None,
        trace_configs: list[aiohttp.TraceConfig] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.timeout_s = timeout_s
        self.retry = retry
        self._base_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"} | (base_headers or {})
        self._trace_configs = trace_configs
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """Return the client's one session, created on first use (inside the running loop)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._base_headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                trace_configs=self._trace_configs,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: object | BodyFactory | None = None,
        headers: HeaderFactory | None = None,
    ) -> Answer:
        """Send until a final answer comes back or the attempts run out (ClipUnavailableError).

        `headers` and a callable `body` are called again before every attempt, so each attempt
        carries a fresh timestamp, nonce and signature.
        """
        last_status: int | None = None
        for attempt in range(1, self.retry.attempts + 1):
            retry_after: float | None = None
            timed_out = False
            try:
                payload = body() if callable(body) else body
                data = json.dumps(payload, separators=(",", ":")).encode() if payload is not None else None
                answer, retry_after = await self._once(method, url, data, headers)
            except TimeoutError:
                timed_out, reason = True, f"no answer within {self.timeout_s:g}s"
            except aiohttp.ClientError as exc:
                reason = f"connection failed: {type(exc).__name__}: {exc}"
            else:
                if not _retryable(answer.status, answer.body):
                    return answer
                last_status = answer.status
                code, message = answer.error_code_and_message()
                reason = f"HTTP {answer.status}" + (f" ({code}: {message})" if code else "")
            if attempt == self.retry.attempts:
                summary = f"{method} {url} failed after {attempt} attempt(s): {reason}"
                cls = ClipTimeoutError if timed_out else ClipUnavailableError
                raise cls(summary, attempts=attempt, status=None if timed_out else last_status)
            wait = self.retry.delay(attempt, retry_after)
            log.warning(
                "%s %s attempt %d/%d: %s; retrying in %.2fs", method, url, attempt, self.retry.attempts, reason, wait
            )
            await self.retry.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, method: str, url: str, data: bytes | None, headers: HeaderFactory | None
    ) -> tuple[Answer, float | None]:
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers |= headers() if headers is not None else {}
        async with self.session().request(method, url, data=data, headers=all_headers) as resp:
            raw = await resp.read()
            answer = Answer(resp.status, _decode(raw), resp.headers.get(REQUEST_ID_HEADER))
            return answer, parse_retry_after(resp.headers.get("Retry-After"))


class TransportClient:
    """Base of the backends: owns one Transport (one session), closed by `async with` or `aclose()`."""

    _transport: Transport

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session."""
        await self._transport.aclose()
