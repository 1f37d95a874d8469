from pathlib import Path

from eventpipe.config import Settings
from gateway.app import build_app
from gateway.openapi import build_spec, render


def test_repo_copy_is_current() -> None:
    path = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"
    assert path.read_text() == render(), "regenerate with: python -m gateway.openapi > docs/openapi.json"


def test_every_served_route_is_described() -> None:
    app = build_app(Settings())
    documented = build_spec()["paths"]
    for resource in app.router.resources():
        path = resource.canonical
        assert path in documented, path
        for route in resource:
            if route.method != "HEAD":
                assert route.method.lower() in documented[path], (path, route.method)
