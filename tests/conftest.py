from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import CLICKHOUSE, KAFKA, Stack


def _reachable(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.keywords:
            continue
        if item.path.name.startswith("test_it_"):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed integration test's report ends with the logs of the stacks it used (those it made, and
    those still open: a module's), whatever the test did with them."""
    report = yield
    if report.failed and call.when == "call" and "integration" in item.keywords:
        first = item.stash.get(_FIRST_STACK, len(Stack.made))
        for n, stack in enumerate(Stack.made):
            if (n >= first or not stack.closed) and stack.logs:
                report.sections.append((f"stage logs of stack {stack.id}", stack.log_tails()))
    return report


_FIRST_STACK = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_FIRST_STACK] = len(Stack.made)


@pytest.fixture(scope="session")
def kafka() -> str:
    if not _reachable(KAFKA):
        pytest.fail(f"Kafka is not reachable at {KAFKA}: run the suite with `make test`, which starts it")
    return KAFKA


@pytest.fixture(scope="session")
def clickhouse_server() -> str:
    """The local ClickHouse 26 server's writer URL (no database)."""
    if not CLICKHOUSE:
        pytest.fail("no local ClickHouse server (.local/clickhouse/server.json): run the suite with `make test`")
    hostport = CLICKHOUSE.split("@")[-1].split("/")[0]
    if not _reachable(hostport):
        pytest.fail(f"ClickHouse is not reachable at {hostport}: run the suite with `make test`, which starts it")
    return CLICKHOUSE


@pytest.fixture
def stack(kafka: str, clickhouse_server: str, tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path) as s:
        yield s


@pytest.fixture(scope="module")
def gateway(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway process alone (tests read the raw-events topic), shared by a module's tests."""
    s = Stack(Path(tmp_path_factory.mktemp("gateway")))
    try:
        yield s.start_gateway()
    finally:
        s.close()


@pytest.fixture(scope="module")
def api_key(gateway: Stack) -> str:
    return gateway.create_team("gateway-tests")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault cases' figures (tests/chaos.py), one table, whichever ran."""
    from tests.chaos import RESULTS

    if RESULTS:
        terminalreporter.section("fault cases: N sent, stored (uniqExact uuid), duplicates, count() after FINAL")
        for result in RESULTS:
            terminalreporter.write_line(("ok    " if result.ok else "LOST  ") + result.line())
