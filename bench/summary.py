"""The one table ``python -m bench`` ends with: every benchmark's headline figures, each against its target.

Each benchmark's ``run(args)`` returns a list of :class:`Row`; ``bench.__main__`` collects them over every
benchmark that ran and prints :func:`print_summary` once at the end (also when only some ran, or when one
was interrupted). A row is a figure, optionally a ceiling it is compared with, and optionally a target:
the verdict is computed here, from numbers, so every module states targets the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Target:
    """``value >= threshold`` (``at_least``) or ``value <= threshold``; of the ratio when ``of_ratio``."""

    threshold: float
    at_least: bool = True
    of_ratio: bool = False

    def met(self, value: float, ratio: float | None) -> bool | None:
        measured = ratio if self.of_ratio else value
        if measured is None:
            return None
        return measured >= self.threshold if self.at_least else measured <= self.threshold

    def describe(self, unit: str) -> str:
        sign = "≥" if self.at_least else "≤"
        if self.of_ratio:
            return f"ratio {sign} {self.threshold:g}"
        return f"{sign} {_number(self.threshold)} {unit}".rstrip()


@dataclasses.dataclass(frozen=True)
class Row:
    """One figure of the summary table. ``ceiling`` (same unit) gives the ratio; ``target`` the verdict;
    ``note`` says what the figure is when its name cannot (e.g. how many samples)."""

    bench: str
    figure: str
    value: float
    unit: str = ""
    ceiling: float | None = None
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.ceiling if self.ceiling else None

    @property
    def met(self) -> bool | None:
        return self.target.met(self.value, self.ratio) if self.target is not None else None


def ratio_row(bench: str, figure: str, value: float, ceiling: float, unit: str, at_least: float) -> Row:
    """A throughput against its ceiling in the same run: met when value ÷ ceiling ≥ ``at_least``."""
    return Row(bench, figure, value, unit, ceiling, Target(at_least, of_ratio=True))


def at_least(bench: str, figure: str, value: float, unit: str, threshold: float, note: str = "") -> Row:
    return Row(bench, figure, value, unit, target=Target(threshold), note=note)


def at_most(bench: str, figure: str, value: float, unit: str, threshold: float, note: str = "") -> Row:
    return Row(bench, figure, value, unit, target=Target(threshold, at_least=False), note=note)


def info(bench: str, figure: str, value: float, unit: str = "", note: str = "") -> Row:
    """A figure without a target (e.g. CPU µs per event, the base of the sizing rule)."""
    return Row(bench, figure, value, unit, note=note)


def check(bench: str, figure: str, ok: bool, note: str = "") -> Row:
    """A correctness check shown with the figures (e.g. stored == accepted): 1 = yes, target = 1."""
    return Row(bench, figure, 1.0 if ok else 0.0, "yes/no", target=Target(1.0), note=note)


def _number(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}".rstrip("0").rstrip(".") if v != int(v) else f"{v:.0f}"


def _value(row: Row) -> str:
    if row.unit == "yes/no":
        return "yes" if row.value else "NO"
    if row.unit == "%":
        return f"{row.value:+.1f} %"
    return f"{_number(row.value)} {row.unit}".rstrip()


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "-"}[met]


def table(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    """The summary as text cells, header first (for :func:`bench.common.print_table`)."""
    out: list[tuple[str, ...]] = [("bench", "figure", "value", "ceiling", "ratio", "target", "verdict")]
    for r in rows:
        out.append((
            r.bench,
            f"{r.figure} ({r.note})" if r.note else r.figure,
            _value(r),
            f"{_number(r.ceiling)} {r.unit}".rstrip() if r.ceiling else "-",
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
            ("yes" if r.unit == "yes/no" else r.target.describe(r.unit)) if r.target else "-",
            _verdict(r.met),
        ))
    return out


def print_summary(rows: Sequence[Row], not_run: Sequence[str] = ()) -> None:
    from bench.common import print_table  # here: bench.common imports bench.gateway, which imports this module

    if not rows:
        return
    print("== all benchmarks: every headline figure against its target (figures vary ±15-20% run to run; "
          "never asserted)")
    print_table(table(rows), left=2)
    missed = [f"{r.bench}: {r.figure}" for r in rows if r.met is False]
    verdict = f"{len(missed)} of {sum(r.target is not None for r in rows)} targets NOT met" if missed else \
        "every target met"
    print(f"   {verdict}" + (f": {'; '.join(missed)}" if missed else ""))
    if not_run:
        print(f"   not run: {', '.join(not_run)} (their figures are not in the table)")
