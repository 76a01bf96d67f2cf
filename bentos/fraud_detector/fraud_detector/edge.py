"""The service's edge: an ASGI middleware in front of BentoML's predict route.

It does three things BentoML alone does not:

1. **Validation with a reason.** ``POST /predict`` and ``POST /predict_batch``
   bodies are parsed and validated against :class:`~fraud_detector.schema.Transaction`
   before anything else. Invalid input gets 400 (malformed JSON), 413 (body too
   large), 415 (not JSON) or 422 (anything else) with a JSON body that names
   the field, and is counted in ``fraud_model_rejected_inputs_total{reason}``.
   A body without a content type is refused (415), and one nested deeper than
   the JSON parser goes (a few hundred bytes of brackets) is a 400
   ``nesting_too_deep`` at once.
   It never reaches the model, so it can never become a 5xx or a default.
2. **The shortest path to the model.** The validated transactions are scored
   here, by the service's own scoring method, instead of being parsed and
   validated a second time by BentoML's routing and input/output descriptors
   (which cost more than the model itself; see docs/benchmarks.md). BentoML's
   outer layers (request metrics, tracing, timeout) still see every request.
   With adaptive batching on, requests are forwarded to the batchable
   ``/predict_batch`` API instead, single ones as batches of one, so all share
   BentoML's batching queue; the answer is unwrapped.
3. **Readiness with a reason.** While the service will not serve its model
   (not the declared one, or one that failed its release gate: see
   :mod:`fraud_detector.loading`), ``/readyz`` and the predict routes answer 503
   with ``{"ready": "false", "reason": ..., "message": ...}``.
4. **Deliberate overload.** Requests beyond ``max_inflight`` per worker, and
   requests that waited in the event loop longer than ``max_queue_ms`` before
   their turn, are shed at once (admitted requests keep a bounded latency);
   and, when adaptive
   batching is on, requests that BentoML's dispatcher drops because they
   cannot meet the latency budget (its 503 "process is overloaded") are
   rewritten to the same documented 503 with ``Retry-After``; both are counted
   in ``fraud_model_shed_requests_total``. 503 is used for shedding only, so an
   error-rate check can count 5xx other than 503 as model errors.
5. **Routing config.** On the stable pods the edge acts on the FraudModel's routing
   config (:mod:`fraud_detector.routing`), checked for changes on the request path
   at most once a second, so it changes during a rollout without a restart.
6. **Account-sticky split.** With a ``sticky`` target in that config (``stickyBy``), the
   stable edge sends the canary's keys to the canary track and answers with its
   predictions, the stable answering when the canary does not
   (:mod:`fraud_detector.sticky_edge`); the answer names the config in
   ``x-fraudmodel-routing``.
7. **Mirroring** (:mod:`fraud_detector.mirror`). With a shadow target in the routing
   config, a sampled share of scored requests is queued, *after* the client has its
   answer, with the stable's predictions, and sent to the shadow's ``POST /mirror``
   in the background; a full queue drops (and counts), never waits. On the shadow
   track ``POST /mirror`` scores the pairs and records the agreement table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .loading import NotServable
from .metrics import ServiceMetrics
from .mirror import MIRROR, Mirror, pair_cells, parse_mirror_body
from .routing import NO_ROUTING, RoutingConfig
from .schema import Prediction, Transaction
from .settings import Settings
from .sticky import ROUTING_HEADER, StickyRoute
from .sticky_edge import CanaryClient, HttpCanaryClient, Split, sticky_metrics

__all__ = [
    "PREDICT",
    "PREDICT_BATCH",
    "READYZ",
    "EdgeMiddleware",
    "Rejection",
    "Scorer",
    "reason_for",
    "validate_body",
]

PREDICT = "/predict"
PREDICT_BATCH = "/predict_batch"
READYZ = "/readyz"
_ONE = TypeAdapter(Transaction)
_ONE_OUT = TypeAdapter(Prediction)
_MANY_OUT = TypeAdapter(list[Prediction])
_MANY_IN = TypeAdapter(list[Transaction])
logger = logging.getLogger(__name__)

Scorer = Callable[[Sequence[Transaction]], Awaitable[list[Prediction]]]
"""Scores validated transactions (``FraudDetector.score``)."""

_REASONS = {
    "missing": "missing_field",
    "finite_number": "not_finite",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "greater_than": "out_of_range",
    "less_than": "out_of_range",
    "string_too_short": "out_of_range",
    "string_too_long": "out_of_range",
    "extra_forbidden": "unknown_field",
}


def reason_for(error_type: str) -> str:
    """Our rejection reason for a pydantic error type; type errors by default."""
    return _REASONS.get(error_type, "wrong_type")


class _Shed(Exception):
    """BentoML's dispatcher shed a request the edge made on the client's behalf."""


class Rejection(Exception):
    """An input the edge refuses; rendered as a JSON error response."""

    def __init__(self, status: int, errors: list[dict[str, str]]) -> None:
        super().__init__(errors[0]["message"])
        self.status = status
        self.errors = errors

    @property
    def reason(self) -> str:
        return self.errors[0]["reason"]

    def body(self) -> bytes:
        first = self.errors[0]
        return json.dumps(
            {
                "error": "invalid input",
                "reason": first["reason"],
                "field": first["field"],
                "message": f"{first['field']}: {first['message']}",
                "errors": self.errors[:20],
            }
        ).encode()


def _reject(status: int, reason: str, field: str, message: str) -> Rejection:
    return Rejection(status, [{"field": field, "reason": reason, "message": message}])


def _path(prefix: str, loc: tuple[int | str, ...]) -> str:
    out = prefix
    for part in loc:
        name = part if part != "" else '""'  # an empty key still gets a visible name
        out += f"[{name}]" if isinstance(name, int) else (f".{name}" if out else str(name))
    return out or "$"


def _check(item: Any, prefix: str) -> Transaction:
    try:
        return _ONE.validate_python(item)
    except ValidationError as exc:
        errors = [
            {"field": _path(prefix, tuple(e["loc"])), "reason": reason_for(e["type"]), "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise Rejection(422, errors) from None


def validate_body(path: str, body: bytes, settings: Settings) -> list[Transaction]:
    """Validate a predict body; return its transactions or raise Rejection."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _reject(400, "malformed_json", "$", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        # The C parser stops at the interpreter's recursion limit (about 1,000 levels)
        # and raises at once; escaped, the error hung the request until BentoML's
        # timeout and came back as an uncounted 500. No transaction nests at all.
        raise _reject(400, "nesting_too_deep", "$", "body is nested too deeply to be a transaction") from None
    if path == PREDICT:
        if not isinstance(payload, dict):
            raise _reject(422, "wrong_type", "$", "body must be one transaction (a JSON object)")
        return [_check(payload, "")]
    if not isinstance(payload, dict):
        raise _reject(422, "wrong_type", "$", 'body must be {"transactions": [...]}')
    for key in payload:
        if key != "transactions":
            raise _reject(
                422, "unknown_field", _path("", (key,)), "unexpected field; the body has only 'transactions'"
            )
    if "transactions" not in payload:
        raise _reject(422, "missing_field", "transactions", "Field required")
    items = payload["transactions"]
    if not isinstance(items, list):
        raise _reject(422, "wrong_type", "transactions", "must be a list of transactions")
    if len(items) > settings.max_batch_size:
        raise _reject(
            422,
            "batch_too_large",
            "transactions",
            f"{len(items)} transactions, at most {settings.max_batch_size} per request",
        )
    return [_check(item, f"transactions[{i}]") for i, item in enumerate(items)]


def _request_id(scope: Scope) -> str:
    """The caller's ``x-request-id`` ("" without one: each pair then carries its transaction id)."""
    for key, value in scope.get("headers") or ():
        if key == b"x-request-id":
            return bytes(value).decode("latin-1")[:128]
    return ""


def _content_type(scope: Scope) -> bytes:
    """The request's media type, lower case without parameters; b"" when there is none
    (a body without a content type is not taken for JSON)."""
    for key, value in scope.get("headers") or ():
        if key == b"content-type":
            return bytes(value).split(b";")[0].strip().lower()
    return b""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        metrics: Callable[[], ServiceMetrics],
        scorer: Callable[[], Scorer | None],
        problem: Callable[[], NotServable | None] = lambda: None,
        routing: Callable[[], RoutingConfig] = lambda: NO_ROUTING,
        canary_client: CanaryClient | None = None,
        mirror: Mirror | None = None,
        pair_scorer: Callable[[], Scorer | None] = lambda: None,
    ) -> None:
        self.app = app
        self.routing = routing
        self.canary_client = canary_client
        self._split: Split | None = None
        self._route_of: tuple[RoutingConfig, StickyRoute | None] | None = None
        self.mirror = mirror
        self.pair_scorer = pair_scorer  # scores mirrored pairs (the direct path, batching or not)
        self.paths = (
            (PREDICT, PREDICT_BATCH, MIRROR) if settings.track == "shadow" else (PREDICT, PREDICT_BATCH)
        )
        self.settings = settings
        self.metrics = metrics
        self.scorer = scorer
        self.problem = problem
        self.inflight = 0
        self.max_queue_s = settings.max_queue_ms / 1000.0
        self._shed_body = json.dumps(
            {
                "error": "overloaded",
                "reason": "shed",
                "message": "the service is shedding load; retry after the Retry-After delay",
                "retry_after_seconds": settings.retry_after_seconds,
            }
        ).encode()
        self._retry_after = (b"retry-after", str(settings.retry_after_seconds).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        routing = NO_ROUTING
        if scope["type"] == "http":
            # Any request (probes too, so an idle pod keeps it fresh): at most one stat a second.
            routing = self.routing()
        if scope["type"] == "http" and path in (READYZ, *self.paths):
            problem = self.problem()
            if problem is not None:
                # Not the declared model, or not a releasable one: not ready, and
                # saying why (BentoML's own /readyz would only say "not ready").
                await _respond(send, 503, json.dumps(problem.as_dict()).encode())
                return
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in self.paths:
            await self.app(scope, receive, send)
            return
        metrics = self.metrics()
        if self.inflight >= self.settings.max_inflight:
            await self._shed(send, metrics)
            return
        self.inflight += 1
        try:
            # Yield once, so that every request that has already arrived
            # reaches this point before any is processed (a request otherwise
            # runs to completion without suspending and the others would never
            # count as in flight), and measure how long this one then waited
            # behind them: the event loop's queueing delay.
            loop = asyncio.get_running_loop()
            queued_at = loop.time()
            await asyncio.sleep(0)
            # Only a wait behind other requests counts: a lone request delayed
            # because the machine descheduled the process is not overload.
            if self.inflight > 1 and loop.time() - queued_at > self.max_queue_s:
                await self._shed(send, metrics)
                return
            await self._handle(scope, receive, send, path, metrics, routing)
        finally:
            self.inflight -= 1

    async def _shed(self, send: Send, metrics: ServiceMetrics) -> None:
        metrics.shed.inc()
        await _respond(send, 503, self._shed_body, (self._retry_after,))

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        metrics: ServiceMetrics,
        routing: RoutingConfig = NO_ROUTING,
    ) -> None:
        if path == MIRROR:
            await self._pairs(receive, send, metrics)
            return
        try:
            ctype = _content_type(scope)
            if ctype != b"application/json":
                shown = ctype.decode("latin-1")[:80] if ctype else "none"
                raise _reject(
                    415, "unsupported_media_type", "$", f"content type {shown}: send application/json"
                )
            body = await _read_body(receive, self.settings.max_body_bytes)
            if body is None:
                raise _reject(
                    413, "batch_too_large", "$", f"body larger than {self.settings.max_body_bytes} bytes"
                )
            transactions = validate_body(path, body, self.settings)
        except Rejection as rej:
            metrics.rejected(rej.reason)
            await _respond(send, rej.status, rej.body())
            return
        if not transactions:
            await _respond(send, 200, b"[]")
            return
        single = path == PREDICT
        route = self._sticky_route() if self.settings.track == "stable" else None
        if route is not None:
            await self._sticky(scope, send, route, transactions, single, metrics)
            return
        score = self.scorer()
        if score is not None:
            predictions = await self._score(send, score, transactions, single)
            if routing.shadow is not None and self.mirror is not None and predictions is not None:
                # After the answer went out: one append to a bounded queue, never a wait.
                self.mirror.offer(routing.shadow, _request_id(scope), transactions, predictions)
        else:
            await self._forward(scope, receive, send, body, single, metrics)

    async def _score(
        self, send: Send, score: Scorer, transactions: list[Transaction], single: bool
    ) -> list[Prediction] | None:
        """Score and answer; the predictions answered (None after a failure)."""
        try:
            predictions = await score(transactions)
        except Exception as exc:
            logger.exception("scoring %d transaction(s) failed", len(transactions))
            await _respond(send, 500, json.dumps({"error": "scoring failed", "message": str(exc)}).encode())
            return None
        await _respond(
            send, 200, _ONE_OUT.dump_json(predictions[0]) if single else _MANY_OUT.dump_json(predictions)
        )
        return predictions

    async def _pairs(self, receive: Receive, send: Send, metrics: ServiceMetrics) -> None:
        """``POST /mirror`` on a shadow track: score the stable's mirrored transactions and record
        each pair in the agreement table. The answer says only how many were taken."""
        body = await _read_body(receive, self.settings.max_body_bytes * 16)
        score = self.pair_scorer()
        if body is None:
            await _respond(send, 413, b'{"error": "mirror body too large"}')
            return
        if score is None:
            await _respond(send, 503, b'{"error": "not scoring yet"}')
            return
        try:
            pairs = parse_mirror_body(body).pairs
        except ValueError as exc:
            await _respond(
                send, 422, json.dumps({"error": "invalid mirror body", "message": str(exc)}).encode()
            )
            return
        if pairs:
            try:
                predictions = await score([p.transaction for p in pairs])
            except Exception as exc:
                logger.exception("scoring %d mirrored transaction(s) failed", len(pairs))
                await _respond(
                    send, 500, json.dumps({"error": "scoring failed", "message": str(exc)}).encode()
                )
                return
            metrics.paired(pair_cells(pairs, predictions))
        await _respond(send, 202, json.dumps({"pairs": len(pairs)}).encode())

    def _sticky_route(self) -> StickyRoute | None:
        """The routing config's sticky split, parsed once per config (the config object changes
        only when the file does)."""
        config = self.routing()
        if self._route_of is None or self._route_of[0] is not config:
            self._route_of = (config, config.sticky_route())
        return self._route_of[1]

    async def _sticky(
        self,
        scope: Scope,
        send: Send,
        route: StickyRoute,
        transactions: list[Transaction],
        single: bool,
        metrics: ServiceMetrics,
    ) -> None:
        """stickyBy: the canary's keys are answered by the canary (fraud_detector.sticky_edge)."""
        started = time.perf_counter()  # after validation: BentoML's own duration adds ~0.1 ms before
        if self._split is None:
            client = self.canary_client or HttpCanaryClient(self.settings.sticky_timeout_ms / 1000)
            self._split = Split(client, sticky_metrics(*metrics.labels))
        headers = {
            bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in scope["headers"]
        }
        score = self.scorer()

        async def local(part: Sequence[Transaction]) -> list[Prediction]:
            return await (score(part) if score is not None else self._via_app(scope, part))

        try:
            predictions = await self._split.score(route, transactions, headers, local, started)
        except _Shed:
            await self._shed(send, metrics)
            return
        except Exception as exc:
            logger.exception("scoring %d transaction(s) failed", len(transactions))
            await _respond(send, 500, json.dumps({"error": "scoring failed", "message": str(exc)}).encode())
            return
        await _respond(
            send,
            200,
            _ONE_OUT.dump_json(predictions[0]) if single else _MANY_OUT.dump_json(predictions),
            ((ROUTING_HEADER.encode(), route.revision.encode("latin-1", "replace")),),
        )

    async def _via_app(self, scope: Scope, transactions: Sequence[Transaction]) -> list[Prediction]:
        """Score through BentoML's ``/predict_batch`` (adaptive batching) and return the predictions."""
        body = b'{"transactions":' + _MANY_IN.dump_json(list(transactions), exclude_none=True) + b"}"
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        inner_scope = {**scope, "path": PREDICT_BATCH, "raw_path": PREDICT_BATCH.encode(), "headers": headers}
        status = 0
        chunks: list[bytes] = []

        async def inner_receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def inner_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(inner_scope, inner_receive, inner_send)
        if status == 503:
            raise _Shed
        if status != 200:
            raise RuntimeError(f"/predict_batch answered {status}")
        return _MANY_OUT.validate_json(b"".join(chunks))

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, single: bool, metrics: ServiceMetrics
    ) -> None:
        """Hand the request to BentoML's ``/predict_batch`` API (adaptive batching)."""
        forward_body = b'{"transactions":[' + body + b"]}" if single else body
        headers = [
            (k, v) for k, v in scope.get("headers") or [] if k not in (b"content-length", b"content-type")
        ]
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(forward_body)).encode()),
        ]
        inner_scope = {**scope, "path": PREDICT_BATCH, "raw_path": PREDICT_BATCH.encode(), "headers": headers}
        sent = False

        async def inner_receive() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # only a disconnect can follow
            sent = True
            return {"type": "http.request", "body": forward_body, "more_body": False}

        start: Message | None = None
        chunks: list[bytes] = []

        async def inner_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            await self._finish(send, start, b"".join(chunks), single, metrics)

        await self.app(inner_scope, inner_receive, inner_send)

    async def _finish(
        self, send: Send, start: Message, body: bytes, single: bool, metrics: ServiceMetrics
    ) -> None:
        status = int(start["status"])
        if status == 503:
            await self._shed(send, metrics)
            return
        if single and status == 200:
            results = json.loads(body)
            body = json.dumps(results[0]).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
