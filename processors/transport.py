"""The processors' Faust transport: aiokafka's, with a consumer that never commits past an unread offset.

Registered as the ``eventpipe`` transport (``faust.transports`` entry point in pyproject.toml, Faust's
public extension point for drivers); the app's broker URL is ``eventpipe://host:port``.

faust-streaming 0.15 decides what to commit from the offsets its streams acked (``_new_offset``), and
two of its rules let that run past a message no agent ever processed:

* the head check ``min(acked) - committed > 1`` lets exactly one missing offset through (``committed``
  is the *next* offset to read, so any ``min(acked) > committed`` is a hole), and it is skipped when the
  committed offset is 0;
* a jump in the offsets the fetcher hands over (``_add_gap``) is recorded as a "gap" and treated as
  acked. That is right for compacted or transactional topics, whose offsets have holes; the topics our
  agents read are neither (plain, idempotent producers), so a jump means messages were dropped.

Around rebalances a fetched message can be dropped without an ack (the kill test in
tests/test_it_identity.py lost 1-7 of 1200 events in about 1 run of 7 that way). With this consumer a
dropped message holds its partition's commits instead, and the consumer *heals* the hole: once it has
lasted :data:`HEAL_AFTER_S`, the partition is sought back to its committed offset and read again from
there (messages after the hole are processed twice: at-least-once, collapsed downstream by uuid and
version). A hole below the log start (retention deleted the records) is stepped over: nothing there can
be read again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiokafka
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from faust.exceptions import ImproperlyConfigured
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from packaging.version import Version

log = logging.getLogger("eventpipe.processors.transport")

HEAL_AFTER_S = 2.0
# Faust builds its worker's aiokafka consumer with fetch_max_wait_ms=1500 and no setting for it. aiokafka
# leaves a partition whose fetched records are still buffered out of the next fetch request, and sends one
# request per broker at a time: when that request holds only partitions without new data (an idle
# identity_inbox partition, say), the broker parks it for the whole wait and the busy partitions are not
# fetched meanwhile. The e2e bench saw the worker stop for ~1.2 s every ~1.7 s at 1,000 events/s (p50
# capture -> row 984 ms). 100 ms bounds that stall; an idle worker then polls ten times a second.
FETCH_MAX_WAIT_MS = 100


class Consumer(faust_aiokafka.Consumer):
    """aiokafka's Faust consumer with gap-free commits (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holes: dict[TP, tuple[int, float]] = {}  # tp -> (committed offset, first seen)
        self._healing: set[TP] = set()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def committed_offset(self, tp: TP) -> int | None:
        """The partition's committed offset as this consumer knows it: the next offset to read."""
        return self._committed_offset.get(tp)

    def _new_offset(self, tp: TP) -> int | None:
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if acked and committed is not None:
            first = min(acked)
            if first > committed:
                self._hole(tp, committed, first)
                return None
        self._holes.pop(tp, None)
        return super()._new_offset(tp)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Not an ack: the offsets in between were dropped, not absent (see the module docstring).
        log.warning("fetcher skipped offsets %d..%d of %s; they stay uncommitted", offset_from, offset_to, tp)

    def _hole(self, tp: TP, committed: int, first_acked: int) -> None:
        now = time.monotonic()
        seen = self._holes.get(tp)
        if seen is None or seen[0] != committed:
            self._holes[tp] = (committed, now)
            return
        if now - seen[1] < HEAL_AFTER_S or tp in self._healing:
            return
        self._holes[tp] = (committed, now)
        self._healing.add(tp)
        task = asyncio.get_running_loop().create_task(self._heal(tp, committed, first_acked))
        task.add_done_callback(lambda _t: self._healing.discard(tp))

    async def _heal(self, tp: TP, committed: int, first_acked: int) -> None:
        if tp not in self.assignment():
            return
        start = (await self.earliest_offsets(tp)).get(tp, 0)
        if start > committed:
            log.warning("offsets %d..%d of %s were deleted by retention; committing past them", committed, start, tp)
            self._committed_offset[tp] = start
            return
        log.warning(
            "offset %d of %s was never processed (acked from %d on): reading %s again from %d",
            committed, tp, first_acked, tp, committed,
        )
        await self.seek(tp, committed)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, building the worker's aiokafka consumer with :data:`FETCH_MAX_WAIT_MS`.

    The body is upstream's ``_create_worker_consumer`` with that one argument changed;
    tests/test_unit_transport.py pins upstream's source, so an upgrade that changes it fails there.
    """

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        isolation_level: str = "read_uncommitted"
        conf = self.app.conf
        if self.consumer.in_transaction:
            isolation_level = "read_committed"
        has_changelog_tables = bool(self.app.tables.changelog_topics)
        self._assignor = (
            self.app.assignor
            if self.app.conf.table_standby_replicas > 0 or has_changelog_tables
            else RoundRobinPartitionAssignor
        )
        auth_settings = faust_aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context)
        max_poll_interval = conf.broker_max_poll_interval or 0
        request_timeout = conf.broker_request_timeout
        session_timeout = conf.broker_session_timeout
        rebalance_timeout = conf.broker_rebalance_timeout
        if session_timeout > request_timeout:
            raise ImproperlyConfigured(
                f"Setting broker_session_timeout={session_timeout} "
                f"cannot be greater than broker_request_timeout={request_timeout}"
            )
        consumer_kwargs: dict[str, Any] = {}
        if Version(aiokafka.__version__) < Version("0.13.0"):  # aiokafka 0.13 dropped api_version
            consumer_kwargs["api_version"] = conf.consumer_api_version
        return aiokafka.AIOKafkaConsumer(
            **consumer_kwargs,
            client_id=conf.broker_client_id,
            group_id=conf.id,
            group_instance_id=conf.consumer_group_instance_id,
            bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
            partition_assignment_strategy=[self._assignor],
            enable_auto_commit=False,
            auto_offset_reset=conf.consumer_auto_offset_reset,
            max_poll_records=conf.broker_max_poll_records,
            max_poll_interval_ms=int(max_poll_interval * 1000.0),
            max_partition_fetch_bytes=conf.consumer_max_fetch_size,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            request_timeout_ms=int(request_timeout * 1000.0),
            check_crcs=conf.broker_check_crcs,
            session_timeout_ms=int(session_timeout * 1000.0),
            rebalance_timeout_ms=int(rebalance_timeout * 1000.0),
            heartbeat_interval_ms=int(conf.broker_heartbeat_interval * 1000.0),
            isolation_level=isolation_level,
            metadata_max_age_ms=conf.consumer_metadata_max_age_ms,
            connections_max_idle_ms=conf.consumer_connections_max_idle_ms,
            **auth_settings,
        )


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Consumer`."""

    Consumer = Consumer
