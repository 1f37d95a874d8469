"""Kafka edges shared by every stage: topic creation, producer settings, the live team registry."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.partitioner import DefaultPartitioner, murmur2

from eventpipe.config import Settings
from eventpipe.contract import Topics, now_ts
from eventpipe.teams import (
    Key,
    Registry,
    Team,
    TeamError,
    TeamInfo,
    claim_record,
    ending,
    key_record,
    name_record,
    new_api_key,
    project_key_error,
    team_name_error,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


def topics_for(settings: Settings) -> Topics:
    return Topics(settings.topic_prefix)


MAX_REPLICATION_FACTOR = 3


def auto_replication_factor(brokers: int) -> int:
    """The replication factor on a cluster of ``brokers`` brokers: min(3, brokers), at least 1."""
    return max(1, min(MAX_REPLICATION_FACTOR, brokers))


def min_insync_replicas(replication_factor: int) -> int:
    """2 of 3 (or more) copies must acknowledge a write (acks=all), so one broker may be down; else 1."""
    return 2 if replication_factor >= 3 else 1


def replication_configs(replication_factor: int) -> dict[str, str]:
    """Topic configs that go with a replication factor. RF 1 keeps the broker's default (1 on a single
    node), so ``topic_specs(settings)`` stays what deploy/'s topic script creates."""
    if replication_factor <= 1:
        return {}
    return {"min.insync.replicas": str(min_insync_replicas(replication_factor))}


def topic_specs(settings: Settings, replication_factor: int = 1) -> list[NewTopic]:
    t = topics_for(settings)
    n = settings.partitions
    rf = replication_factor
    names = (
        t.raw_events,
        t.historical_events,
        t.identity_inbox,
        t.events,
        t.persons,
        t.person_distinct_ids,
        t.person_distinct_id_overrides,
        t.groups,
        t.ingestion_warnings,
        t.dead_letters,
    )
    configs = replication_configs(rf)
    specs = [NewTopic(name, n, rf, topic_configs=dict(configs)) for name in names]
    # One partition gives the registry a total order, which the team-id ownership rule relies on.
    specs.append(NewTopic(t.teams, 1, rf, topic_configs={"cleanup.policy": "compact", **configs}))
    return specs


class TopicCreationError(RuntimeError):
    """Kafka refused a topic (e.g. a replication factor above the number of brokers); not retried."""


# The auto replication factor per bootstrap string, read from the cluster once per process.
_resolved_rf: dict[str, int] = {}


async def replication_factor(settings: Settings, admin: AIOKafkaAdminClient | None = None) -> int:
    """EVENTPIPE_REPLICATION_FACTOR, or (auto) min(3, brokers the cluster's metadata reports).

    Read once per process and bootstrap string, so ensure_topics and the processors' Faust app
    (through :func:`resolved_replication_factor`) create their topics with the same value. The
    metadata lists live brokers only: a cluster with a broker down at first start gets fewer copies.
    """
    if settings.replication_factor > 0:
        return settings.replication_factor
    cached = _resolved_rf.get(settings.kafka_bootstrap)
    if cached is not None:
        return cached
    if admin is None:
        return await _with_admin(settings, lambda a: replication_factor(settings, a))
    brokers = len((await admin.describe_cluster())["brokers"])
    rf = _resolved_rf[settings.kafka_bootstrap] = auto_replication_factor(brokers)
    log.info("replication factor %d (auto: %d brokers at %s)", rf, brokers, settings.kafka_bootstrap)
    return rf


def resolved_replication_factor(settings: Settings) -> int:
    """:func:`replication_factor` for sync code outside an event loop (the processors' build_app): the
    value ensure_topics already read, else read now on a thread of its own (the caller's loop untouched)."""
    if settings.replication_factor > 0:
        return settings.replication_factor
    cached = _resolved_rf.get(settings.kafka_bootstrap)
    if cached is not None:
        return cached
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, replication_factor(settings)).result()


async def _with_admin(
    settings: Settings, fn: Callable[[AIOKafkaAdminClient], Awaitable[T]], timeout_s: float = 30
) -> T:
    """``fn(admin)`` with a started admin client, retried while Kafka is unreachable."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            return await fn(admin)
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka at {settings.kafka_bootstrap} unreachable: {exc!r}") from exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


async def ensure_topics(settings: Settings, specs: Iterable[NewTopic] | None = None, timeout_s: float = 30) -> None:
    """Create the project's topics if missing (idempotent; safe to race from several processes), with
    :func:`replication_factor` copies. Topics that exist are left as they are."""

    async def create(admin: AIOKafkaAdminClient) -> None:
        if specs is not None:
            wanted = list(specs)
        else:
            wanted = topic_specs(settings, await replication_factor(settings, admin))
        existing = set(await admin.list_topics())
        for spec in wanted:
            if spec.name in existing:
                continue
            response = await admin.create_topics([spec])
            for topic, code, *message in response.topic_errors:
                if code and code != TopicAlreadyExistsError.errno:
                    detail = f"{for_code(code).__name__} {message[0] if message else ''}".rstrip()
                    raise TopicCreationError(f"Kafka refused topic {topic} (RF {spec.replication_factor}): {detail}")
        # CreateTopics returns before every broker's metadata has the topic: a consumer subscribing right
        # away could see a topic without partitions, get none of it assigned and only look again after
        # metadata.max.age (5 minutes). So wait until each topic has a leader for every partition.
        names = [spec.name for spec in wanted]
        while not _all_led(await admin.describe_topics(names), names):  # noqa: ASYNC110 (polls the broker)
            await asyncio.sleep(0.1)

    await _with_admin(settings, create, timeout_s)


def _all_led(described: list[dict[str, Any]], names: list[str]) -> bool:
    """Every topic of ``names`` described without error, with a leader for each of its partitions."""
    seen = {
        t["topic"]: t
        for t in described
        if not t.get("error_code") and t.get("partitions") and all(p.get("leader", -1) >= 0 for p in t["partitions"])
    }
    return all(name in seen for name in names)


class CachedPartitioner:
    """aiokafka's default partitioner (Kafka's: murmur2 of the key, modulo the partition count) with the
    hash of recent keys remembered.

    aiokafka computes murmur2 in pure Python, ~3 µs for a ``team_id:distinct_id`` key, on every send;
    keys repeat (one user's events), so a dict read replaces most of them. The partition is the same
    as the default partitioner's, which the processors' routing relies on (docs/identity.md).
    """

    def __init__(self, max_keys: int = 65_536) -> None:
        self.max_keys = max_keys
        self._hashes: dict[bytes, int] = {}
        self._fallback = DefaultPartitioner()

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return self._fallback(key, all_partitions, available)
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self.max_keys:
                self._hashes.clear()  # bounded memory; a miss costs one hash, not a wrong partition
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]


def producer(settings: Settings, **overrides: object) -> AIOKafkaProducer:
    """Producer with the durability every stage needs: acks=all, idempotence, short linger; batches
    compressed with EVENTPIPE_KAFKA_COMPRESSION."""
    opts: dict[str, object] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 1024 * 1024,
        "max_request_size": 2 * 1024 * 1024,
        "compression_type": None if settings.kafka_compression == "none" else settings.kafka_compression,
        "request_timeout_ms": 30_000,
        "partitioner": CachedPartitioner(),
    }
    opts.update(overrides)
    return AIOKafkaProducer(**opts)  # type: ignore[arg-type]


class RegistryReader:
    """Tails the compacted teams topic into a :class:`Registry` held in memory.

    Lookups are dict reads. A key the registry doesn't know triggers :meth:`catch_up` (coalesced across
    concurrent callers), which waits until the reader has consumed up to the topic's end offset — so
    a team created a moment ago is found, while unknown keys cost one metadata round trip, not a miss.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry()
        self._tp = TopicPartition(topics_for(settings).teams, 0)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._position = 0
        self._advanced = asyncio.Event()
        self._catching_up: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await self._consumer.start()
        self._consumer.assign([self._tp])
        await self._consumer.seek_to_beginning(self._tp)
        self._task = asyncio.create_task(self._run(), name="team-registry")
        await self.catch_up(timeout_s=30)
        self._ready.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(self._tp, timeout_ms=500)
            for msg in batches.get(self._tp, []):
                self.registry.apply(msg.offset, (msg.key or b"").decode(), msg.value)
            self._position = await self._consumer.position(self._tp)
            self._advanced.set()
            self._advanced.clear()

    async def catch_up(self, timeout_s: float = 5.0) -> None:
        """Wait until everything written to the registry before this call has been applied."""
        if self._catching_up is None or self._catching_up.done():
            self._catching_up = asyncio.create_task(self._catch_up(timeout_s))
        await asyncio.shield(self._catching_up)

    async def _catch_up(self, timeout_s: float) -> None:
        assert self._consumer is not None
        end = (await self._consumer.end_offsets([self._tp]))[self._tp]
        deadline = time.monotonic() + timeout_s
        while self._position < end:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"team registry not caught up in {timeout_s}s ({self._position}/{end})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), left)

    def team_id(self, api_key: str) -> int | None:
        """The dict read of the hot path (gateway.prepare's ``team_of``): a valid key's team, else None."""
        return self.registry.team_id(api_key)

    async def resolve(self, api_key: str) -> int | None:
        """Team id for ``api_key``; for a key no team holds, catch up with the topic once before answering
        None (a key revoked or past its grace is known: None at once, decided by the clock)."""
        if not self._ready.is_set():
            await self._ready.wait()
        team_id = self.registry.team_id(api_key)
        if team_id is None and not self.registry.holds(api_key):
            try:
                await self.catch_up()
            except (TimeoutError, KafkaError):
                log.warning("team registry catch-up failed; treating key as unknown", exc_info=True)
            team_id = self.registry.team_id(api_key)
        return team_id


Write = Callable[[str, bytes | None], Awaitable[None]]


@contextlib.asynccontextmanager
async def _registry_writer(settings: Settings) -> AsyncIterator[tuple[Registry, Write]]:
    """A caught-up registry and ``write(kafka_key, value)``, which appends a record (None: a tombstone)
    and waits until the registry has folded it, so the caller sees its own write and whether it won."""
    await ensure_topics(settings)
    topic = topics_for(settings).teams
    reader = RegistryReader(settings)
    prod = producer(settings)
    await reader.start()
    await prod.start()

    async def write(kafka_key: str, value: bytes | None) -> None:
        await prod.send_and_wait(topic, value, key=kafka_key.encode())
        await reader.catch_up(timeout_s=30)

    try:
        yield reader.registry, write
    finally:
        await prod.stop()
        await reader.stop()


async def create_team(settings: Settings, name: str, api_key: str | None = None, attempts: int = 10) -> Team:
    """Append a new team, with ``api_key`` (an existing PostHog project key, kept) or a fresh one;
    retries on a lost team-id race (see eventpipe.teams). TeamError for a key that can't be kept."""
    if why := team_name_error(name):
        raise TeamError(why)
    if api_key is not None and (why := project_key_error(api_key)):
        raise TeamError(f"--api-key {api_key!r}: {why}")
    async with _registry_writer(settings) as (registry, write):
        for _ in range(attempts):
            key = api_key or new_api_key()
            if registry.holds(key):
                raise TeamError(f"api key {key} belongs to a team already (see `eventpipe teams list`)")
            team = Team(registry.next_team_id(), name, key, now_ts())
            claim, value = claim_record(team.team_id, name, key, team.created_at)
            await write(claim, value)
            if registry.accepted(claim):
                return team
            await write(claim, None)  # lost the id (or the key) to an earlier claim: withdraw, look again
        raise RuntimeError(f"could not allocate a team id after {attempts} attempts")


async def rotate_key(settings: Settings, team_ref: str, grace_s: float) -> tuple[TeamInfo, Key]:
    """A new key for the team ``team_ref`` names; its other keys stay valid ``grace_s`` more seconds
    (0: revoked now). The new key is written first, so the team is never without a valid key."""
    async with _registry_writer(settings) as (registry, write):
        team = registry.find(team_ref)
        kafka_key, value = key_record(team.team_id, new_api_key(), now_ts())
        await write(kafka_key, value)
        new = registry.key_of(kafka_key)
        if new is None:  # 256 random bits held already, or the team vanished: neither can happen
            raise RuntimeError(f"the new key of team {team.team_id} was not accepted")
        now = time.time()
        for old in team.keys:
            if (record := ending(old, grace_s, now, now_ts())) is not None:
                await write(*record)
        after = registry.team(team.team_id)
        assert after is not None
        return after, new


async def revoke_key(settings: Settings, api_key: str, grace_s: float = 0) -> tuple[TeamInfo, Key, bool]:
    """End ``api_key`` now or after ``grace_s`` seconds: (its team, the key, whether anything changed).
    Never extends a key that ends sooner; TeamError for a key no team holds."""
    async with _registry_writer(settings) as (registry, write):
        key = registry.key(api_key)
        if key is None:
            raise TeamError(f"no team holds the api key {api_key!r} (see `eventpipe teams list`)")
        record = ending(key, grace_s, time.time(), now_ts())
        if record is not None:
            await write(*record)
        team, after = registry.team(key.team_id), registry.key(api_key)
        assert team is not None and after is not None
        return team, after, record is not None


async def rename_team(settings: Settings, team_ref: str, name: str) -> TeamInfo:
    if why := team_name_error(name):
        raise TeamError(why)
    async with _registry_writer(settings) as (registry, write):
        team = registry.find(team_ref)
        await write(*name_record(team.team_id, name))
        after = registry.team(team.team_id)
        assert after is not None
        return after


async def list_teams(settings: Settings) -> list[TeamInfo]:
    await ensure_topics(settings)
    reader = RegistryReader(settings)
    await reader.start()
    try:
        return reader.registry.teams()
    finally:
        await reader.stop()
