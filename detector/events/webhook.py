"""HTTP webhook sink: HMAC-signed POSTs, retries with backoff, an outbox for the rest.

One event per request. Each request carries

``X-Syncguard-Timestamp``
    Send time, integer epoch seconds.
``X-Syncguard-Signature``
    ``sha256=<hex>``: HMAC-SHA256 with the shared secret over ``<timestamp>.<body>``
    (the timestamp, a dot, then the raw body bytes). Signing the timestamp lets a receiver
    refuse replays older than a few minutes; see `verify`.
``Idempotency-Key``
    SHA-256 hex of the body: deterministic per event, identical on every re-send, so a
    receiver can drop a duplicate after a crash between its 2xx and our delete.
``X-Syncguard-Event-Id``
    The native ``event_id`` (also the OCSF ``finding_info.uid``).

The secret comes from ``SYNCGUARD_WEBHOOK_SECRET``. It is held in a `Secret`, whose repr
is redacted, and is scrubbed from every error text; it never reaches logs, events,
errors or reprs.

Delivery: every event is first written to the outbox (`detector.events.outbox`), then the
outbox is sent oldest first. Connection errors, timeouts, 408, 429 and 5xx are retried
with exponential backoff and jitter (``Retry-After`` honoured, capped) up to
``max_attempts``; other statuses are not retried. On the first event that still fails,
delivery stops for this run (order is kept) and later events only queue; the next run
delivers the outbox first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from detector import __version__
from detector.errors import UsageError
from detector.events.formats import Formatter
from detector.events.outbox import Outbox, OutboxItem, lease_owner
from detector.events.sinks import SinkBase, SinkReport

__all__ = [
    "SECRET_ENV",
    "AUTHORIZATION_ENV",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "IDEMPOTENCY_HEADER",
    "EVENT_ID_HEADER",
    "Secret",
    "RetryPolicy",
    "WebhookSink",
    "sign",
    "verify",
    "idempotency_key",
    "redact_url",
]

SECRET_ENV = "SYNCGUARD_WEBHOOK_SECRET"
AUTHORIZATION_ENV = "SYNCGUARD_WEBHOOK_AUTHORIZATION"
SIGNATURE_HEADER = "X-Syncguard-Signature"
TIMESTAMP_HEADER = "X-Syncguard-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_ID_HEADER = "X-Syncguard-Event-Id"

_RETRY_STATUSES = frozenset({408, 425, 429})
_log = logging.getLogger("syncguard.events.webhook")


class Secret:
    """A secret string that never shows itself in reprs, logs or tracebacks.

    Parameters
    ----------
    value : str
        Non-empty.
    name : str
        Where it came from (an environment variable name), used in messages.
    """

    __slots__ = ("_value", "name")

    def __init__(self, value: str, *, name: str = "secret") -> None:
        if not value:
            raise UsageError(f"{name} is empty")
        self._value = value
        self.name = name

    @classmethod
    def from_env(cls, name: str, *, required: bool = True) -> Secret | None:
        """Read the secret from environment variable ``name``.

        Raises
        ------
        UsageError
            If ``required`` and the variable is unset or empty.
        """
        value = os.environ.get(name, "")
        if not value:
            if required:
                raise UsageError(
                    f"environment variable {name} is not set: the webhook sink signs every "
                    "request with it (HMAC-SHA256); set it to the secret shared with the "
                    "receiver (32+ random bytes)"
                )
            return None
        return cls(value, name=name)

    def reveal(self) -> bytes:
        """The secret bytes, for signing only."""
        return self._value.encode("utf-8")

    def scrub(self, text: str) -> str:
        """``text`` with every occurrence of the secret replaced by ``***``."""
        return text.replace(self._value, "***")

    def __repr__(self) -> str:
        return f"Secret(name={self.name!r}, value='***')"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # pragma: no cover - refuse to be pickled into a file
        raise TypeError("Secret cannot be pickled")


def sign(secret: Secret, timestamp: str, body: bytes) -> str:
    """Signature header value: ``sha256=`` + HMAC-SHA256(secret, timestamp + "." + body)."""
    digest = hmac.new(secret.reveal(), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(
    secret: Secret,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """Check a request the way a receiver should (constant-time, with a freshness window).

    Parameters
    ----------
    secret : Secret
    timestamp, signature : str
        The ``X-Syncguard-Timestamp`` and ``X-Syncguard-Signature`` header values.
    body : bytes
        The raw request body.
    tolerance_s : float, default 300
        Refuse timestamps further than this from ``now`` (replay protection).
    now : float, optional
        Defaults to ``time.time()``.
    """
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def idempotency_key(body: bytes) -> str:
    """SHA-256 hex of the request body: same event, same key, on every re-send."""
    return hashlib.sha256(body).hexdigest()


def redact_url(url: str) -> str:
    """The URL without credentials or query string, safe for logs and messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one event is tried within a run.

    Parameters
    ----------
    max_attempts : int, default 5
        Total attempts per event per run, including the first.
    timeout_s : float, default 10
        Per request (connect and each read).
    backoff_base_s : float, default 0.5
        Delay ceiling after the first failure; doubles after each further failure.
    backoff_max_s : float, default 30
        Cap on any one delay, ``Retry-After`` included.
    """

    max_attempts: int = 5
    timeout_s: float = 10.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.timeout_s <= 0 or self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("timeout_s must be > 0 and backoff delays >= 0")

    def delay(self, failures: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait after ``failures`` failed attempts.

        "Equal jitter": half the exponential ceiling plus a random half, so processes that
        failed together spread out but never retry immediately. A server's
        ``Retry-After`` wins when longer, still capped at ``backoff_max_s``.
        """
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (failures - 1))
        wait = ceiling / 2 + rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max_s))
        return wait

    @property
    def worst_case_s(self) -> float:
        """Longest one event can take across all attempts (sets the outbox lease)."""
        return self.max_attempts * (self.timeout_s * 2 + self.backoff_max_s)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would re-send (or drop) a signed body to another URL."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


@dataclass(frozen=True)
class _Attempt:
    status: int | None
    detail: str
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in _RETRY_STATUSES or self.status >= 500


class WebhookSink(SinkBase):
    """POST each event to a URL, signed, retried, with an outbox for what fails.

    Parameters
    ----------
    url : str
        ``http://`` or ``https://`` endpoint (a Splunk HEC endpoint with format ``hec`` or
        ``hec-ocsf``).
    outbox : Outbox
        Durable queue in the store; delivered first, oldest first.
    formatter : str or callable, default "native"
        ``native``, ``ocsf``, ``hec`` or ``hec-ocsf`` (see `detector.events.formats`).
    secret : Secret or str, optional
        HMAC key; by default read from ``SYNCGUARD_WEBHOOK_SECRET`` (required).
    authorization : Secret or str, optional
        ``Authorization`` header value (e.g. ``"Splunk <hec-token>"``); by default read
        from ``SYNCGUARD_WEBHOOK_AUTHORIZATION`` if set. Treated as a secret.
    retry : RetryPolicy, optional
    sleep : callable, default time.sleep
        Injected so tests need not wait.
    rng : random.Random, optional
        Jitter source.

    Raises
    ------
    UsageError
        For a URL that is not http(s), or a missing secret.

    Examples
    --------
    >>> from detector.events.outbox import Outbox  # doctest: +SKIP
    >>> sink = WebhookSink("https://soar.example/hook", Outbox.open(home.store_path),
    ...                    formatter="ocsf")  # doctest: +SKIP
    >>> for event in events:  # doctest: +SKIP
    ...     sink.emit(event)
    >>> report = sink.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        outbox: Outbox,
        *,
        formatter: Formatter | str = "native",
        secret: Secret | str | None = None,
        authorization: Secret | str | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(formatter)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(
                f"webhook URL {redact_url(url)!r} must be an http:// or https:// URL with a host"
            )
        self._url, basic = _split_credentials(url)
        self.url = redact_url(url)
        self._outbox = outbox
        if secret is None:
            secret = Secret.from_env(SECRET_ENV)
        self._secret = secret if isinstance(secret, Secret) else Secret(secret, name="secret")
        if authorization is None:
            authorization = Secret.from_env(AUTHORIZATION_ENV, required=False) or basic
        elif isinstance(authorization, str):
            authorization = Secret(authorization, name="authorization")
        self._authorization = authorization
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._opener = urllib.request.build_opener(_NoRedirect())
        # Unique per sink object so two sinks in one process never share a lease.
        self._owner = lease_owner()
        self._lease_ttl_s = self.retry.worst_case_s + 30.0
        self._blocked = False
        self._closed = False
        if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            _log.warning("webhook %s is plain HTTP: events travel unencrypted", self.url)

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.url!r}, sink={self._outbox.sink!r}, retry={self.retry!r})"

    # ------------------------------------------------------------------ public

    def emit(self, event: Mapping[str, Any]) -> None:
        """Queue one event durably, then deliver whatever the outbox holds, oldest first.

        Raises
        ------
        OutboxFullError
            If the outbox is full; the event is not queued and nothing is dropped.
        """
        if self._closed:
            raise UsageError(f"webhook sink for {self.url} is already closed")
        line = self._render(event)
        if line is None:
            return
        body = line.encode("utf-8")
        self._outbox.enqueue(body, idempotency_key=idempotency_key(body),
                             event_id=event.get("event_id"))
        self._pump()

    def flush(self) -> None:
        """Deliver what the outbox holds (also called by `close`)."""
        self._pump()

    def close(self) -> SinkReport:
        """Deliver the outbox (unless delivery already failed this run); report what is left."""
        if not self._closed:
            self._pump()
            self._outbox.release(self._owner)
            self._closed = True
            self.report.queued = self._outbox.count()
            if self.report.queued:
                _log.warning(
                    "webhook %s: %d events wait in the outbox; the next run delivers them first",
                    self.url, self.report.queued,
                )
        return self.report

    # ------------------------------------------------------------------ delivery

    def _pump(self) -> None:
        if self._blocked:
            return
        while True:
            # Lease first, then read: rows read while holding it cannot be another
            # process's already-delivered rows.
            if not self._outbox.acquire(self._owner, self._lease_ttl_s):
                _log.info("webhook %s: another syncguard process is delivering the outbox; "
                          "queued events wait for it", self.url)
                return
            items = self._outbox.head(limit=50)
            if not items:
                return
            for item in items:
                # Renewed per item: the lease outlives the worst case of one delivery.
                if not self._outbox.acquire(self._owner, self._lease_ttl_s):
                    return
                if not self._deliver(item):
                    self._blocked = True
                    return
                self._outbox.remove(item.id)
                self.report.written += 1

    def _deliver(self, item: OutboxItem) -> bool:
        attempt = _Attempt(None, "not attempted")
        for number in range(1, self.retry.max_attempts + 1):
            attempt = self._post(item)
            if attempt.ok:
                return True
            final = not attempt.retryable or number == self.retry.max_attempts
            _log.warning(
                "webhook %s: event %s attempt %d/%d failed: %s%s",
                self.url, item.event_id or item.idempotency_key[:12], number,
                self.retry.max_attempts, attempt.detail,
                "" if final else " (retrying)",
            )
            if final:
                break
            self._sleep(self.retry.delay(number, self._rng, attempt.retry_after))
        error = (
            f"event {item.event_id or item.idempotency_key[:12]} not delivered to {self.url}: "
            f"{attempt.detail}"
            + ("" if attempt.retryable else " (not retried: the receiver refused it)")
        )
        error = self._scrub(error)
        self.report.errors.append(error)
        self._outbox.record_failure(item.id, error)
        return False

    def _post(self, item: OutboxItem) -> _Attempt:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"syncguard/{__version__}",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, item.body),
            IDEMPOTENCY_HEADER: item.idempotency_key,
        }
        if item.event_id:
            headers[EVENT_ID_HEADER] = item.event_id
        if self._authorization is not None:
            headers["Authorization"] = self._authorization.reveal().decode("utf-8")
        request = urllib.request.Request(self._url, data=item.body, headers=headers,
                                         method="POST")
        try:
            with self._opener.open(request, timeout=self.retry.timeout_s) as response:
                response.read(65536)
                return _Attempt(response.status, f"HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            exc.close()
            # The reason phrase is the receiver's text: scrub it like any other.
            return _Attempt(exc.code, self._scrub(f"HTTP {exc.code} {exc.reason}"), retry_after)
        except urllib.error.URLError as exc:
            return _Attempt(None, self._scrub(_describe(exc.reason)))
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            return _Attempt(None, self._scrub(_describe(exc)))

    def _scrub(self, text: str) -> str:
        text = self._secret.scrub(text)
        return self._authorization.scrub(text) if self._authorization else text


def _split_credentials(url: str) -> tuple[str, Secret | None]:
    """``url`` without ``user:password@``, and those as a Basic ``Authorization`` secret.

    urllib does not send URL credentials itself (it would look ``user:password@host`` up
    as a host name, and print it in the error); as a header they work and are scrubbed
    from every message like the other secrets.
    """
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    netloc = parts.netloc.rpartition("@")[2]
    userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    basic = Secret("Basic " + base64.b64encode(userinfo.encode("utf-8")).decode("ascii"),
                   name="webhook URL credentials")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), basic


def _describe(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out waiting for the receiver"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}"
    return str(reason)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (HTTP dates are ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
