"""The `eventpipe teams` command line: argument handling and refusals that need no Kafka."""

from __future__ import annotations

import pytest

from eventpipe import cli


def parse(*argv: str) -> object:
    return cli.build_parser().parse_args(["teams", *argv])


def test_rotate_key_defaults_to_a_day_of_grace() -> None:
    args = parse("rotate-key", "web")
    assert (args.teams_cmd, args.team, args.grace, args.json) == ("rotate-key", "web", 86400, False)  # type: ignore[attr-defined]
    assert parse("rotate-key", "3", "--grace", "30s", "--json").grace == 30  # type: ignore[attr-defined]
    assert parse("rotate-key", "3", "--grace", "0").grace == 0  # type: ignore[attr-defined]


def test_revoke_key_is_at_once_unless_given_a_grace() -> None:
    assert parse("revoke-key", "phc_k").grace == 0  # type: ignore[attr-defined]
    args = parse("revoke-key", "phc_k", "--grace", "15m")
    assert (args.api_key, args.grace) == ("phc_k", 900)  # type: ignore[attr-defined]


def test_rename_and_create_arguments() -> None:
    args = parse("rename", "3", "New name")
    assert (args.team, args.name) == ("3", "New name")  # type: ignore[attr-defined]
    args = parse("create", "--name", "web", "--api-key", "phc_x", "--json")
    assert (args.name, args.api_key, args.json) == ("web", "phc_x", True)  # type: ignore[attr-defined]
    assert parse("create", "--name", "web").api_key is None  # type: ignore[attr-defined]
    assert parse("list", "--json").json is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "argv",
    [
        ["rotate-key", "web", "--grace", "30"],
        ["rotate-key", "web", "--grace", "soon"],
        ["revoke-key", "phc_k", "--grace=-1s"],
    ],
)
def test_a_bad_grace_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "is not a duration: use a number and a unit (s, m, h, d), e.g. 30s, 15m, 24h, 7d" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["rotate-key"], ["revoke-key"], ["rename", "3"], ["create"]])
def test_missing_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("key", "says"),
    [("phx_" + "a" * 43, "personal api key"), ("phc_short", "phc_ followed by 20 to 60"), ("x" * 31, "phc_ followed")],
)
def test_create_refuses_a_key_of_the_wrong_shape_before_any_kafka(
    key: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["teams", "create", "--name", "web", "--api-key", key]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --api-key") and says in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["create", "--name", " "], "a team name can't be empty"),
        (["create", "--name", "x" * 201], "a team name has at most 200 characters"),
        (["rename", "3", ""], "a team name can't be empty"),
    ],
)
def test_a_team_name_must_be_something(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["teams", *argv]) == 1
    assert capsys.readouterr().err == f"error: {says}\n"
