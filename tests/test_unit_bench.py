"""The benchmarks' pure parts: the one summary table, the e2e bench's request bodies and RSS verdicts.
No Kafka, no ClickHouse, no timing."""

from __future__ import annotations

import argparse
import types
import uuid

import pytest
import ujson

import bench.__main__ as bench_main
from bench.e2e import PROBE_EVENT, UUID_STAMP, Bodies, RssSeries
from bench.summary import at_least, at_most, check, info, print_summary, ratio_row, table


def test_ratio_rows_are_met_by_their_ratio_not_their_value() -> None:
    good = ratio_row("sink", "rows/s", 90_000, 100_000, "rows/s", 0.8)
    bad = ratio_row("sink", "rows/s", 20_000, 100_000, "rows/s", 0.8)
    assert (good.ratio, good.met) == (0.9, True)
    assert (bad.ratio, bad.met) == (0.2, False)


def test_thresholds_and_figures_without_target() -> None:
    assert at_least("e2e", "events/s", 20_000, "events/s", 20_000).met is True
    assert at_least("e2e", "events/s", 19_999, "events/s", 20_000).met is False
    assert at_most("e2e", "p99", 2_500, "ms", 2_000).met is False
    assert at_most("e2e", "growth", -3.0, "%", 10).met is True
    assert info("e2e", "CPU", 120, "µs/event").met is None
    assert check("e2e", "stored == accepted", False).met is False


def test_table_cells() -> None:
    rows = table([
        ratio_row("gateway", "/batch/ events/s", 16_000, 20_000, "events/s", 0.8),
        at_most("e2e", "p99", 2_500, "ms", 2_000, note="40 probes"),
        info("e2e", "CPU per event: sink", 71.5, "µs/event"),
        check("e2e", "stored == accepted", True),
        at_most("e2e", "soak RSS growth: sink", 12.34, "%", 10),
    ])
    assert rows[0] == ("bench", "figure", "value", "ceiling", "ratio", "target", "verdict")
    assert rows[1] == ("gateway", "/batch/ events/s", "16,000 events/s", "20,000 events/s", "0.80", "ratio ≥ 0.8",
                       "met")
    assert rows[2] == ("e2e", "p99 (40 probes)", "2,500 ms", "-", "-", "≤ 2,000 ms", "NOT met")
    assert rows[3][2:] == ("71.5 µs/event", "-", "-", "-", "-")
    assert rows[4][2:] == ("yes", "-", "-", "yes", "met")
    assert rows[5][2] == "+12.3 %"
    assert rows[5][5:] == ("≤ 10.0 %", "NOT met")


def test_print_summary_counts_the_targets_missed(capsys: pytest.CaptureFixture[str]) -> None:
    print_summary([at_least("e2e", "events/s", 5_000, "events/s", 20_000), info("e2e", "CPU", 1, "µs/event"),
                   check("e2e", "stored == accepted", True)], not_run=["sink"])
    out = capsys.readouterr().out
    assert "1 of 2 targets NOT met: e2e: events/s" in out
    assert "not run: sink" in out
    print_summary([])
    assert capsys.readouterr().out == ""


def _fake(rows: list[object], interrupt: bool = False) -> types.SimpleNamespace:
    def run(_args: argparse.Namespace) -> list[object]:
        if interrupt:
            raise KeyboardInterrupt
        return rows

    return types.SimpleNamespace(add_arguments=lambda _p: None, run=run)


def test_main_prints_one_table_of_what_ran(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    first = at_least("one", "events/s", 30_000, "events/s", 20_000)
    second = at_most("two", "p99", 1_000, "ms", 2_000)
    monkeypatch.setattr(bench_main, "BENCHMARKS", {"one": _fake([first]), "two": _fake([second]),
                                                   "three": _fake([], interrupt=True)})
    assert bench_main.main(["two"]) == 0
    out = capsys.readouterr().out
    assert out.count("== all benchmarks") == 1 and "two " in out and "one " not in out
    # Interrupted: what finished still gets its table, and the rest is named.
    assert bench_main.main(["one", "three"]) == 130
    out = capsys.readouterr().out
    assert "every target met" in out and "not run: three" in out


def test_e2e_bodies_stamp_a_fresh_uuid_on_every_event_of_every_request() -> None:
    bodies = Bodies.build("phc_test")
    assert len(bodies.plain) == len(bodies.probe)
    seen: set[str] = set()
    sends = 2 * len(bodies.plain) + 1  # every body twice over: a reused body must not repeat its uuids
    for send in range(sends):
        body, first = bodies.stamped(send, probe=send % 2 == 0)
        batch = ujson.loads(body)["batch"]
        uuids = [str(uuid.UUID(e["uuid"])) for e in batch]
        assert uuids[0] == first and UUID_STAMP not in body.decode()
        assert (batch[0]["event"] == PROBE_EVENT) == (send % 2 == 0)
        assert all(e["event"] != PROBE_EVENT for e in batch[1:])
        seen.update(uuids)
    assert len(seen) == sends * 100


def test_soak_growth_is_measured_from_after_warm_up() -> None:
    series = RssSeries(at=[0, 10, 20, 30, 40, 50, 60],
                       kib={"sink": [50_000, 90_000, 100_000, 104_000, 105_000, 107_000, 108_000]})
    warm, end, growth = series.growth("sink", 60) or (0, 0, 0.0)
    assert (warm, end) == (100_000, 108_000)  # the first sample at or past 20 % of 60 s (t = 20)
    assert growth == pytest.approx(8.0)
    assert RssSeries().growth("sink", 60) is None
