"""Optional OpenTelemetry traces (``[tracing] otlp_endpoint``): a span per session, upstream
connection attempt, replay, job (with its upstream request) and webhook delivery (a child of the
job that enqueued it, through the ``traceparent`` the webhook job carries).

Off by default, at no cost: without an endpoint (or an explicit provider, as tests pass) every call
here returns at once and nothing of OpenTelemetry is set up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .config import ConfigError

__all__ = ["Tracer", "tracer_from_config"]


class Tracer:
    def __init__(self, provider: Any = None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("streamproxy") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start(self, name: str, parent: Any = None, **attributes: Any) -> Any:
        """A started span (child of ``parent`` when given), or None when tracing is off."""
        if self._tracer is None:
            return None
        from opentelemetry import trace

        context = trace.set_span_in_context(parent) if parent is not None else None
        return self._tracer.start_span(name, context=context, attributes=_clean(attributes))

    @staticmethod
    def end(span: Any, error: str | None = None, attributes: dict[str, Any] | None = None) -> None:
        if span is None:
            return
        if attributes:
            span.set_attributes(_clean(attributes))
        if error:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    @contextlib.contextmanager
    def span(self, name: str, parent: Any = None, **attributes: Any) -> Iterator[Any]:
        span = self.start(name, parent, **attributes)
        try:
            yield span
        except BaseException as e:
            self.end(span, error=f"{type(e).__name__}: {e}")
            raise
        else:
            self.end(span)

    def carrier(self, span: Any) -> dict[str, str]:
        """``span``'s W3C trace context (``traceparent``) for work that continues elsewhere, e.g.
        in another job; empty when tracing is off."""
        if self._tracer is None or span is None:
            return {}
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        out: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(out, context=trace.set_span_in_context(span))
        return out

    def remote_parent(self, carrier: Any) -> Any:
        """The span a :meth:`carrier` names, usable as ``parent``; None when off or absent."""
        if self._tracer is None or not isinstance(carrier, dict) or not carrier:
            return None
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = trace.get_current_span(TraceContextTextMapPropagator().extract(carrier))
        return parent if parent.get_span_context().is_valid else None

    def shutdown(self) -> None:
        if self.provider is not None and hasattr(self.provider, "shutdown"):
            self.provider.shutdown()  # flushes what is batched


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if isinstance(v, str | bool | int | float)}


def tracer_from_config(otlp_endpoint: str, service: str) -> Tracer:
    """An OTLP/HTTP exporting tracer for ``otlp_endpoint`` (e.g. ``http://collector:4318``)."""
    if not otlp_endpoint:
        return Tracer()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(
            "tracing.otlp_endpoint", "needs the OpenTelemetry SDK: pip install 'streamproxy[tracing]'"
        ) from None

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    endpoint = otlp_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return Tracer(provider)
