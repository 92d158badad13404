"""Redis: a cache of query embeddings and of search results (with a TTL), and the pub/sub channel
on which the index build job announces new index versions.

Redis is optional and may die: every call has a short timeout, a failure opens a circuit for
`retry_after_s` (look-ups are bypassed and counted, with one warning per `warn_every_s`), and the
subscriber reconnects by itself.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import redis

from facevoice.service.metrics import Metrics

CHANNEL = "facevoice:index"
log = logging.getLogger("facevoice.cache")


def _client(url: str, timeout_s: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                retry_on_timeout=False, health_check_interval=0)


def announce(url: str, published: dict[str, str]) -> int:
    """Tells every replica that these indexes have new versions; returns how many listened."""
    return int(_client(url, 2.0).publish(CHANNEL, json.dumps(published)))


class Cache:
    def __init__(self, url: str | None, metrics: Metrics, ttl_s: int = 300, timeout_s: float = 0.1,
                 retry_after_s: float = 1.0, warn_every_s: float = 30.0, prefix: str = "facevoice"):
        self.url, self.metrics, self.ttl_s, self.prefix = url, metrics, ttl_s, prefix
        self.retry_after_s, self.warn_every_s = retry_after_s, warn_every_s
        self.client = _client(url, timeout_s) if url else None
        self._open_until = 0.0
        self._last_warning = -float("inf")

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def _usable(self, cache: str) -> bool:
        if self.client is None:
            return False
        if time.monotonic() < self._open_until:
            self.metrics.cache_bypassed.labels(cache).inc()
            return False
        return True

    def _failed(self, cache: str, e: Exception) -> None:
        self._open_until = time.monotonic() + self.retry_after_s
        self.metrics.cache_bypassed.labels(cache).inc()
        self.metrics.dependency_errors.labels("redis").inc()
        self.metrics.up.labels("redis").set(0)
        now = time.monotonic()
        if now - self._last_warning >= self.warn_every_s:
            self._last_warning = now
            log.warning("Redis at %s unreachable (%s); answering without the cache", self.url, e)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def get(self, cache: str, key: str) -> bytes | None:
        if not self._usable(cache):
            return None
        try:
            value = self.client.get(f"{self.prefix}:{cache}:{key}")
        except redis.RedisError as e:
            self._failed(cache, e)
            return None
        self.metrics.up.labels("redis").set(1)
        (self.metrics.cache_hits if value is not None else self.metrics.cache_misses).labels(cache).inc()
        return value

    def put(self, cache: str, key: str, value: bytes) -> None:
        if not self._usable(cache):
            return
        try:
            self.client.set(f"{self.prefix}:{cache}:{key}", value, ex=self.ttl_s)
        except redis.RedisError as e:
            self._failed(cache, e)


class Subscriber(threading.Thread):
    """Calls `on_publish(published)` for every announcement; reconnects while Redis is down."""

    def __init__(self, url: str, on_publish: Callable[[dict[str, str]], None], backoff_s: float = 0.5):
        super().__init__(name="facevoice-index-subscriber", daemon=True)
        self.url, self.on_publish, self.backoff_s = url, on_publish, backoff_s
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            client = pubsub = None
            try:
                client = _client(self.url, 1.0)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CHANNEL)
                while not self._halt.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        self._handle(message["data"])
            except redis.RedisError:
                self._halt.wait(self.backoff_s)  # the service also polls the pointers, so nothing is missed
            except Exception:  # a bug in a handler must not end the subscription
                log.exception("index announcement handling failed; resubscribing")
                self._halt.wait(self.backoff_s)
            finally:  # every reconnect closes the connections of the last one
                for c in (pubsub, client):
                    if c is not None:
                        try:
                            c.close()
                        except Exception:
                            log.debug("closing a Redis connection failed", exc_info=True)

    def _handle(self, data: bytes) -> None:
        try:
            published = json.loads(data)
            if not isinstance(published, dict):
                raise ValueError("not an object")
        except ValueError as e:
            log.warning("ignoring a malformed index announcement %r (%s)", data[:200], e)
            return
        self.on_publish({str(k): str(v) for k, v in published.items()})

    def stop(self) -> None:
        self._halt.set()
