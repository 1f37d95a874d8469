"""Deploy artefacts checked offline: Kubernetes manifests, docker-compose.yml, Dockerfile, YAML style.

* deploy/k8s: every base manifest and every rendered kustomization (base and overlays) validates
  against the Kubernetes OpenAPI schemas shipped by PyPI's ``kubernetes-validate`` (strict: unknown
  fields fail), for the oldest and newest Kubernetes versions we claim. Rendering uses
  tests/kustomize_lite.py and, where ``kubectl`` exists, is compared with ``kubectl kustomize``.
* The manifests, the compose file and the Dockerfile are checked against the code: commands are real
  ``eventpipe`` subcommands, every ``EVENTPIPE_*`` variable is one that eventpipe/config.py reads,
  ports, probe paths and ready-marker names match what the gateway and the workers serve and write,
  and the topic script creates the topics of ``eventpipe.kafka.topic_specs()``.
* yamllint (config: .yamllint) over every YAML file of the repository.

Each checker returns a list of problems; the negative tests feed deliberately broken input to the same
checkers and expect problems, so a broken manifest fails here (and in CI).
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version, major_minor
from yamllint import linter
from yamllint.config import YamlLintConfig

from eventpipe import config
from eventpipe.cli import build_parser
from eventpipe.config import Settings, StoreURL
from eventpipe.contract import Topics
from eventpipe.kafka import topic_specs
from tests import kustomize_lite
from tests.kustomize_lite import Resource, containers, pod_spec

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
KUSTOMIZATIONS = [BASE, *sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
TOPIC_SCRIPT = BASE / "create-topics.sh"
# Oldest Kubernetes the manifests claim (deploy/k8s/README.md) and the newest the schemas know.
K8S_VERSIONS = ("1.30", major_minor(latest_version()))
EVENTPIPE_IMAGE = "eventpipe"
CONTAINER_HOME = "/var/lib/eventpipe"


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- what the code says ------------------------------------------------------------------------------


@cache
def config_variables() -> frozenset[str]:
    """Every ``EVENTPIPE_*`` variable eventpipe/config.py's load() reads (found in its source)."""
    tree = ast.parse(Path(config.__file__).read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def calls(fn: ast.FunctionDef) -> list[ast.Call]:
        return [n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]

    # _env and every helper built on it (_int, ...): their first argument is the name without prefix.
    readers = {"_env"} | {
        name for name, fn in functions.items() if name != "load" and any(c.func.id == "_env" for c in calls(fn))
    }
    names = {
        "EVENTPIPE_" + c.args[0].value
        for c in calls(functions["load"])
        if c.func.id in readers and c.args and isinstance(c.args[0], ast.Constant) and isinstance(c.args[0].value, str)
    }
    assert {"EVENTPIPE_KAFKA_BOOTSTRAP", "EVENTPIPE_CLICKHOUSE_URL", "EVENTPIPE_PORT"} <= names, names
    return frozenset(names)


@cache
def subcommands() -> frozenset[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    return frozenset(sub.choices)


@cache
def ready_markers() -> frozenset[str]:
    """Stage names the code passes to ``mark_ready(settings, "<stage>")`` -> ``<home>/run/<stage>.ready``."""
    found = set()
    for package in ("eventpipe", "gateway", "processors", "clickhouse"):
        for source in (ROOT / package).glob("*.py"):
            found |= set(re.findall(r"mark_ready\(\s*[\w.]+\s*,\s*\"(\w+)\"\s*\)", source.read_text()))
    assert found, "no mark_ready(settings, '<stage>') call found in the code"
    return frozenset(found)


@cache
def gateway_routes() -> frozenset[str]:
    from gateway.app import build_app

    app = build_app(Settings())
    return frozenset(r.canonical for r in app.router.resources())


@cache
def gateway_shutdown_timeout() -> int:
    match = re.search(r"shutdown_timeout=(\d+)", (ROOT / "gateway" / "app.py").read_text())
    assert match, "gateway/app.py: web.run_app(..., shutdown_timeout=N) not found"
    return int(match.group(1))


# --- Kubernetes --------------------------------------------------------------------------------------


def schema_problems(doc: Resource, versions: tuple[str, ...] = K8S_VERSIONS) -> list[str]:
    """Strict validation against the Kubernetes schemas of each version (offline, shipped in the wheel)."""
    problems = []
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{name} (Kubernetes {version}): {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name}: {exc.message}")
        except (KeyError, TypeError) as exc:
            problems.append(f"{name}: not a Kubernetes resource ({exc!r})")
    return problems


def manifest_files() -> list[Path]:
    """Every standalone manifest under deploy/k8s/base (the overlays hold partial patches only)."""
    return sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


@cache
def rendered(directory: Path) -> tuple[Resource, ...]:
    return tuple(kustomize_lite.render(directory))


def _eventpipe_containers(docs: tuple[Resource, ...] | list[Resource]) -> list[tuple[Resource, dict[str, Any]]]:
    return [
        (doc, c)
        for doc in docs
        for c in containers(doc)
        if kustomize_lite.split_image(c["image"])[0].rsplit("/", 1)[-1] == EVENTPIPE_IMAGE
    ]


def _probe_commands(container: dict[str, Any]) -> list[str]:
    probes = [container.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")]
    return [" ".join(p["exec"]["command"]) for p in probes if p and "exec" in p]


def contract_problems(docs: tuple[Resource, ...] | list[Resource], secret: Resource) -> list[str]:
    """The rendered manifests against the code and against each other."""
    problems: list[str] = []
    known_vars = config_variables()
    by_kind_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    secrets = {secret["metadata"]["name"]: secret} | {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}

    for source in [*config_maps.values(), *secrets.values()]:
        keys = set(source.get("data", {})) | set(source.get("stringData", {}))
        for key in sorted(k for k in keys if k.startswith("EVENTPIPE_")):
            if key not in known_vars:
                problems.append(f"{source['kind']}/{source['metadata']['name']}: {key} is not read by config.load()")

    workloads = [d for d in docs if pod_spec(d) is not None]
    if not workloads:
        problems.append("no workloads rendered")
    for doc in workloads:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = pod_spec(doc)
        assert spec is not None
        if spec.get("securityContext", {}).get("runAsNonRoot") is not True:
            problems.append(f"{name}: pod securityContext.runAsNonRoot must be true")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for vol in volumes.values():
            if "configMap" in vol and vol["configMap"]["name"] not in config_maps:
                problems.append(f"{name}: volume {vol['name']} uses missing ConfigMap {vol['configMap']['name']}")
        for c in containers(doc):
            where = f"{name} container {c['name']}"
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})):
                    problems.append(f"{where}: resources.{kind} needs cpu and memory")
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref and ref["configMapRef"]["name"] not in config_maps:
                    problems.append(f"{where}: envFrom missing ConfigMap {ref['configMapRef']['name']}")
                if "secretRef" in ref and ref["secretRef"]["name"] not in secrets:
                    problems.append(f"{where}: envFrom missing Secret {ref['secretRef']['name']}")
            for env in c.get("env", []):
                if env["name"].startswith("EVENTPIPE_") and env["name"] not in known_vars:
                    problems.append(f"{where}: {env['name']} is not read by config.load()")
            for mount in c.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{where}: volumeMount of undeclared volume {mount['name']}")
            if any(TOPIC_SCRIPT.name in part for part in c.get("command", []) + c.get("args", [])):
                provided = {e["name"] for e in c.get("env", [])}
                for ref in c.get("envFrom", []):
                    provided |= set(config_maps.get(ref.get("configMapRef", {}).get("name", ""), {}).get("data", {}))
                for var in sorted(topic_script_settings() - provided):
                    problems.append(
                        f"{where}: {TOPIC_SCRIPT.name} reads {var}, which the container's environment lacks"
                    )

    for doc, c in _eventpipe_containers(docs):
        where = f"{doc['kind']}/{doc['metadata']['name']} container {c['name']}"
        if "command" in c:
            problems.append(f"{where}: overrides the image's ENTRYPOINT (eventpipe); use args")
        args = c.get("args", [])
        if not args or args[0] not in subcommands():
            problems.append(f"{where}: args {args} do not start with an eventpipe subcommand {sorted(subcommands())}")
        else:
            try:
                build_parser().parse_args(args)
            except SystemExit:
                problems.append(f"{where}: `eventpipe {' '.join(args)}` does not parse")
        for command in _probe_commands(c):
            for stage in re.findall(r"run/(\w+)\.ready", command):
                if stage not in ready_markers():
                    written = sorted(ready_markers())
                    problems.append(f"{where}: probe waits for run/{stage}.ready; the code writes {written}")
            provided = {e["name"] for e in c.get("env", [])}
            for ref in c.get("envFrom", []):
                source = config_maps.get(ref.get("configMapRef", {}).get("name", ""))
                source = source or secrets.get(ref.get("secretRef", {}).get("name", ""), {})
                provided |= set(source.get("data", {})) | set(source.get("stringData", {}))
            for var in re.findall(r"\b(EVENTPIPE_\w+)", command):
                if var not in known_vars:
                    problems.append(f"{where}: probe uses {var}, which config.load() does not read")
                elif var not in provided and var != "EVENTPIPE_HOME":  # the image sets EVENTPIPE_HOME
                    problems.append(f"{where}: probe uses {var}, which the container's environment lacks")
            if "$EVENTPIPE_HOME" in command and not command.startswith("/bin/sh -c"):
                problems.append(f"{where}: exec probes expand $EVENTPIPE_HOME only through /bin/sh -c")

    problems += _gateway_problems(docs, by_kind_name, config_maps)
    problems += _selector_problems(docs, by_kind_name)
    job_scripts = [
        cm["data"][TOPIC_SCRIPT.name] for cm in config_maps.values() if TOPIC_SCRIPT.name in cm.get("data", {})
    ]
    if not job_scripts:
        problems.append(f"no ConfigMap carries {TOPIC_SCRIPT.name}")
    for script in job_scripts:
        problems += topic_script_problems(script)
    return problems


def _gateway_problems(
    docs: tuple[Resource, ...] | list[Resource],
    by_kind_name: dict[tuple[str, str], Resource],
    config_maps: dict[str, Resource],
) -> list[str]:
    problems: list[str] = []
    gateways = [(d, c) for d, c in _eventpipe_containers(docs) if c.get("args", [None])[0] == "gateway"]
    if len(gateways) != 1:
        return [f"expected one gateway container, found {len(gateways)}"]
    deployment, container = gateways[0]
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            env |= config_maps.get(ref["configMapRef"]["name"], {}).get("data", {})
    port = int(env.get("EVENTPIPE_PORT", Settings().port))
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if port not in ports.values():
        problems.append(f"gateway listens on {port} (EVENTPIPE_PORT) but declares ports {ports}")
    if env.get("EVENTPIPE_HOST", Settings().host) != "0.0.0.0":
        problems.append("gateway: EVENTPIPE_HOST must be 0.0.0.0 in a pod")
    routes = gateway_routes()
    expect = {"livenessProbe": "/_health", "readinessProbe": "/_ready"}
    for probe_name, path in expect.items():
        probe = container.get(probe_name, {}).get("httpGet", {})
        if probe.get("path") != path:
            problems.append(f"gateway {probe_name} must GET {path}, has {probe}")
        if probe.get("port") not in (port, *[n for n, p in ports.items() if p == port]):
            problems.append(f"gateway {probe_name} port {probe.get('port')} is not the gateway port")
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = container.get(probe_name, {}).get("httpGet", {}).get("path")
        if path and path not in routes:
            problems.append(f"gateway {probe_name} path {path} is not a gateway route")
    template = deployment["spec"]["template"]
    annotations = template["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/scrape") != "true" or annotations.get("prometheus.io/path") not in routes:
        problems.append(f"gateway pods need prometheus.io/scrape and a served prometheus.io/path: {annotations}")
    if str(annotations.get("prometheus.io/port")) != str(port):
        problems.append(f"prometheus.io/port {annotations.get('prometheus.io/port')} != gateway port {port}")
    if "replicas" in deployment["spec"]:
        problems.append("gateway Deployment sets spec.replicas although an HPA scales it")
    # Drain time: preStop sleep + aiohttp's shutdown_timeout must fit in the grace period.
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    sleep_s = int(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0] == "sleep" else 0
    grace = template["spec"].get("terminationGracePeriodSeconds", 30)
    if grace < sleep_s + gateway_shutdown_timeout() + 5:
        problems.append(f"gateway grace {grace}s < preStop {sleep_s}s + shutdown_timeout {gateway_shutdown_timeout()}s")
    services = [d for d in docs if d["kind"] == "Service"]
    labels = template["metadata"]["labels"]
    fronting = [s for s in services if s["spec"]["selector"].items() <= labels.items()]
    if not fronting:
        problems.append("no Service selects the gateway pods")
    for svc in fronting:
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            if target not in ports and target != port:
                problems.append(f"Service {svc['metadata']['name']} targetPort {target} is no gateway port")
    kinds = {(d["kind"], d.get("spec", {}).get("scaleTargetRef", {}).get("name")) for d in docs}
    if ("HorizontalPodAutoscaler", deployment["metadata"]["name"]) not in kinds:
        problems.append("no HorizontalPodAutoscaler targets the gateway Deployment")
    return problems


def _selector_problems(
    docs: tuple[Resource, ...] | list[Resource], by_kind_name: dict[tuple[str, str], Resource]
) -> list[str]:
    problems: list[str] = []
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in docs if "template" in d.get("spec", {})]
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in kustomize_lite.SCALABLE_KINDS:
            selector = doc["spec"]["selector"]["matchLabels"]
            if not selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items():
                problems.append(f"{kind}/{name}: selector does not match its own pod labels")
        if kind == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
            if not any(selector.items() <= labels.items() for labels in pod_labels):
                problems.append(f"PodDisruptionBudget/{name} selects no pods")
        if kind == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            if (ref["kind"], ref["name"]) not in by_kind_name:
                problems.append(f"HorizontalPodAutoscaler/{name} targets missing {ref['kind']}/{ref['name']}")
    return problems


# --- the topic script (shared by docker-compose.yml and the migrate Job) ---------------------------------


def topic_script_settings() -> set[str]:
    """Variables create-topics.sh reads from its environment (KAFKA_TOPICS only overrides the tool)."""
    return set(re.findall(r"\$\{(\w+):-", TOPIC_SCRIPT.read_text())) - {"KAFKA_TOPICS"}


def topic_script_problems(script: str, prefix: str = "eventpipe_") -> list[str]:
    """create-topics.sh creates the topics of topic_specs(): names, partition counts and configs.

    A topic whose partition count follows EVENTPIPE_PARTITIONS must be created with "$partitions";
    one with a fixed count (the single-partition team registry) with that number.
    """
    creates: dict[str, tuple[str, dict[str, str]]] = {}
    for line in script.splitlines():
        if not line.startswith("create "):  # calls of the script's create(), one per line
            continue
        words = shlex.split(line, comments=True)
        if len(words) >= 3:
            configs = dict(w.split("=", 1) for w in words[3:] if "=" in w)
            creates[words[1]] = (words[2], configs)
    problems = []
    specs_a = {s.name.removeprefix(prefix): s for s in topic_specs(Settings(topic_prefix=prefix, partitions=4))}
    specs_b = {s.name.removeprefix(prefix): s for s in topic_specs(Settings(topic_prefix=prefix, partitions=7))}
    for name, spec in specs_a.items():
        if name not in creates:
            problems.append(f"{TOPIC_SCRIPT.name} does not create topic {prefix}{name}")
            continue
        count, configs = creates[name]
        follows_setting = spec.num_partitions != specs_b[name].num_partitions
        expected = "$partitions" if follows_setting else str(spec.num_partitions)
        if count != expected:
            problems.append(f"{name}: {TOPIC_SCRIPT.name} creates it with {count} partitions, expected {expected}")
        if (spec.topic_configs or {}) != configs:
            problems.append(f"{name}: configs {configs} != topic_specs() {spec.topic_configs}")
    topic_names = {
        getattr(Topics(""), attr) for attr in dir(Topics) if isinstance(getattr(Topics, attr, None), property)
    }
    for extra in set(creates) - set(specs_a):
        if extra not in topic_names:
            problems.append(f"{TOPIC_SCRIPT.name} creates {extra}, which is no topic of eventpipe.contract.Topics")
    return problems


# --- docker compose ----------------------------------------------------------------------------------

# The part of the Compose Specification this file may use (a typo in a key must fail, not be ignored).
_HEALTHCHECK = {
    "type": "object",
    "additionalProperties": False,
    "required": ["test"],
    "properties": {
        "test": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "interval": {"type": "string"},
        "timeout": {"type": "string"},
        "retries": {"type": "integer"},
        "start_period": {"type": "string"},
        "start_interval": {"type": "string"},
        "disable": {"type": "boolean"},
    },
}
COMPOSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["services"],
    "patternProperties": {"^x-": {}},
    "properties": {
        "name": {"type": "string"},
        "volumes": {"type": "object"},
        "networks": {"type": "object"},
        "services": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "image": {"type": "string"},
                    "build": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"}},
                    },
                    "hostname": {"type": "string"},
                    "init": {"type": "boolean"},
                    "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
                    "command": {"type": "array", "items": {"type": "string"}},
                    "entrypoint": {"type": "array", "items": {"type": "string"}},
                    "environment": {
                        "type": "object",
                        "additionalProperties": {"type": ["string", "integer", "boolean"]},
                    },
                    "ports": {"type": "array", "items": {"type": "string", "pattern": r"^(\S+:)?\d+:\d+$"}},
                    "volumes": {"type": "array", "items": {"type": "string"}},
                    "tmpfs": {"type": "array", "items": {"type": "string"}},
                    "ulimits": {"type": "object"},
                    "stop_grace_period": {"type": "string", "pattern": r"^\d+s$"},
                    "healthcheck": _HEALTHCHECK,
                    "depends_on": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["condition"],
                            "properties": {
                                "condition": {
                                    "enum": [
                                        "service_started",
                                        "service_healthy",
                                        "service_completed_successfully",
                                    ]
                                },
                                "restart": {"type": "boolean"},
                                "required": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def load_compose(text: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text() if text is None else text)


def _seconds(duration: str) -> int:
    return int(duration.rstrip("s"))


def compose_problems(compose: dict[str, Any]) -> list[str]:
    problems = [
        f"docker-compose.yml: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(COMPOSE_SCHEMA).iter_errors(compose)
    ]
    if problems:
        return problems
    services: dict[str, dict[str, Any]] = compose["services"]
    known_vars = config_variables()
    declared_volumes = set(compose.get("volumes") or {})
    for required in ("kafka", "clickhouse", "init", "gateway", "processors", "sink"):
        if required not in services:
            problems.append(f"service {required} is missing")
    if problems:
        return problems

    kafka, clickhouse = services["kafka"], services["clickhouse"]
    if not kafka["image"].startswith("apache/kafka:"):
        problems.append(f"kafka must run the official apache/kafka image, not {kafka['image']}")
    kenv = {k: str(v) for k, v in kafka.get("environment", {}).items()}
    if set(kenv.get("KAFKA_PROCESS_ROLES", "").split(",")) != {"broker", "controller"}:
        problems.append("kafka must be a combined KRaft broker+controller (KAFKA_PROCESS_ROLES)")
    advertised = kenv.get("KAFKA_ADVERTISED_LISTENERS", "")
    if not clickhouse["image"].startswith("clickhouse/clickhouse-server:"):
        problems.append(f"clickhouse must run clickhouse/clickhouse-server, not {clickhouse['image']}")

    eventpipe_services = {
        name: s for name, s in services.items() if s.get("build") or "eventpipe" in s.get("image", "")
    }
    for name, svc in services.items():
        env = {k: str(v) for k, v in svc.get("environment", {}).items()}
        for var in sorted(v for v in env if v.startswith("EVENTPIPE_")):
            if var not in known_vars:
                problems.append(f"service {name}: {var} is not read by config.load()")
        if "EVENTPIPE_KAFKA_BOOTSTRAP" in env:
            host_port = env["EVENTPIPE_KAFKA_BOOTSTRAP"]
            if host_port.split(":")[0] not in services or f"//{host_port}" not in advertised:
                problems.append(f"service {name}: Kafka bootstrap {host_port} is not kafka's advertised listener")
        if "EVENTPIPE_CLICKHOUSE_URL" in env:
            url = StoreURL.parse(env["EVENTPIPE_CLICKHOUSE_URL"])
            if url.kind != "clickhouse" or url.host not in services or url.port != 9000:
                problems.append(f"service {name}: store {url.redacted()} is not the clickhouse service's port 9000")
        for dep, cond in svc.get("depends_on", {}).items():
            if dep not in services:
                problems.append(f"service {name} depends on unknown service {dep}")
            elif cond["condition"] == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"service {name} waits for {dep} to be healthy but {dep} has no healthcheck")
            elif cond["condition"] == "service_completed_successfully" and services[dep].get("restart") != "no":
                problems.append(f"service {name} waits for one-shot {dep}, which must have restart: 'no'")
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                if not (ROOT / source).exists():
                    problems.append(f"service {name}: bind mount source {source} does not exist")
            elif source not in declared_volumes:
                problems.append(f"service {name}: volume {source} is not declared under volumes:")

    for name, svc in eventpipe_services.items():
        command = svc.get("command") or []
        if svc.get("entrypoint"):
            problems.append(f"service {name}: overrides the image's ENTRYPOINT (eventpipe)")
        if not command or command[0] not in subcommands():
            problems.append(f"service {name}: command {command} is not an eventpipe subcommand")
            continue
        try:
            build_parser().parse_args(command)
        except SystemExit:
            problems.append(f"service {name}: `eventpipe {' '.join(command)}` does not parse")
        test = " ".join(svc.get("healthcheck", {}).get("test", []))
        for stage in re.findall(r"run/(\w+)\.ready", test):
            if stage not in ready_markers():
                problems.append(f"service {name}: healthcheck waits for run/{stage}.ready, never written")

    gateway = services["gateway"]
    genv = {k: str(v) for k, v in gateway.get("environment", {}).items()}
    port = int(genv.get("EVENTPIPE_PORT", Settings().port))
    if genv.get("EVENTPIPE_HOST") != "0.0.0.0":
        problems.append("gateway: EVENTPIPE_HOST must be 0.0.0.0 in a container")
    if not any(p.rsplit(":", 1)[-1] == str(port) for p in gateway.get("ports", [])):
        problems.append(f"gateway: no published port maps to its EVENTPIPE_PORT {port}")
    test = " ".join(gateway.get("healthcheck", {}).get("test", []))
    if not re.search(rf":{port}/_(ready|health)\b", test):
        problems.append(f"gateway healthcheck must ask /_ready or /_health on port {port}: {test!r}")
    if _seconds(gateway.get("stop_grace_period", "10s")) < gateway_shutdown_timeout():
        problems.append("gateway stop_grace_period is shorter than aiohttp's shutdown_timeout")
    for worker in ("processors", "sink"):
        if _seconds(services[worker].get("stop_grace_period", "10s")) < 30:
            problems.append(f"{worker}: stop_grace_period under 30s cuts the final flush short")
    for name, svc in services.items():
        if svc.get("entrypoint") and any(TOPIC_SCRIPT.name in part for part in svc["entrypoint"]):
            problems += topic_script_problems(TOPIC_SCRIPT.read_text())
            for var in sorted(topic_script_settings() - set(svc.get("environment", {}))):
                problems.append(f"service {name}: {TOPIC_SCRIPT.name} reads {var}, which its environment lacks")
            for var in ("EVENTPIPE_KAFKA_BOOTSTRAP", "EVENTPIPE_TOPIC_PREFIX", "EVENTPIPE_PARTITIONS"):
                mine = str(svc.get("environment", {}).get(var))
                for other, other_svc in eventpipe_services.items():
                    if var in other_svc.get("environment", {}) and str(other_svc["environment"][var]) != mine:
                        problems.append(f"service {name}: {var}={mine} but service {other} uses another value")
    return problems


# --- Dockerfile --------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def dockerfile_problems(text: str, dockerignore: str) -> list[str]:
    problems: list[str] = []
    steps = dockerfile_instructions(text)
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    stages = [a for k, a in steps if k == "FROM"]
    if len(stages) < 2:
        problems.append("Dockerfile must be multi-stage (a build stage and a runtime stage)")
    bases = {re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s.split()[0]) for s in stages}
    if bases != {"python:3.11-slim"}:
        problems.append(f"Dockerfile stages must build FROM python:3.11-slim, not {sorted(bases)}")
    last_stage = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    final = steps[last_stage:]
    users = [a for k, a in final if k == "USER"]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problems.append("the runtime stage must switch to a non-root USER")
    pyproject = (ROOT / "pyproject.toml").read_text()
    script = re.search(r'^eventpipe\s*=\s*"([\w.:]+)"', pyproject, re.M)
    if not script or script.group(1) != "eventpipe.cli:main":
        problems.append("pyproject.toml must declare the console script eventpipe = eventpipe.cli:main")
    entrypoints = [a for k, a in final if k == "ENTRYPOINT"]
    if not entrypoints or json.loads(entrypoints[-1]) != ["eventpipe"]:
        problems.append(f'ENTRYPOINT must be ["eventpipe"] (the console script), is {entrypoints}')
    cmds = [json.loads(a) for k, a in final if k == "CMD"]
    if cmds and (not cmds[-1] or cmds[-1][0] not in subcommands()):
        problems.append(f"CMD {cmds[-1]} is not an eventpipe subcommand")
    env_text = " ".join(a for k, a in steps if k == "ENV")
    for var in sorted(set(re.findall(r"\b(EVENTPIPE_\w+)=", env_text))):
        if var not in config_variables():
            problems.append(f"Dockerfile ENV {var} is not read by config.load()")
    home = re.search(r"\bEVENTPIPE_HOME=(\S+)", env_text)
    if not home or home.group(1) != CONTAINER_HOME:
        problems.append(f"Dockerfile must set EVENTPIPE_HOME={CONTAINER_HOME} (the manifests' probes use it)")
    exposed = {a for k, a in final if k == "EXPOSE"}
    if str(Settings().port) not in exposed:
        problems.append(f"Dockerfile must EXPOSE the gateway port {Settings().port}")
    # What the build copies must be in the context: not excluded by .dockerignore, and present.
    ignored = {line.strip().rstrip("/") for line in dockerignore.splitlines() if line.strip() and line[0] != "#"}
    for required in (".local", ".venv", ".git"):
        if required not in ignored:
            problems.append(f".dockerignore must exclude {required}")
    copied = [a.split()[:-1] for k, a in steps if k == "COPY" and not a.startswith("--from")]
    sources = {src for srcs in copied for src in srcs}
    for src in sorted(sources):
        if src.split("/")[0] in ignored:
            problems.append(f"Dockerfile copies {src}, which .dockerignore excludes")
        if not (ROOT / src).exists():
            problems.append(f"Dockerfile copies {src}, which does not exist")
    include = re.search(r"include\s*=\s*\[([^\]]*)\]", pyproject)
    packages = re.findall(r'"(\w+)\*"', include.group(1)) if include else []
    for package in packages:
        if package not in sources:
            problems.append(f"Dockerfile does not copy package {package} (pyproject's packages.find include)")
    if "README.md" not in sources:
        problems.append("Dockerfile must copy README.md (pyproject's readme)")
    return problems


# --- the tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=_id)
def test_base_manifest_validates_against_kubernetes_schemas(path: Path) -> None:
    docs = kustomize_lite.load_yaml_documents(path)
    assert docs, f"{path} is empty"
    problems = [p for doc in docs for p in schema_problems(doc)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_rendered_kustomization_validates(directory: Path) -> None:
    docs = rendered(directory)
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    assert len(docs) >= len(listed)
    problems = [p for doc in docs for p in schema_problems(doc)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_rendered_kustomization_matches_the_code(directory: Path) -> None:
    secret = kustomize_lite.load_yaml_documents(BASE / "secret.example.yaml")[0]
    problems = contract_problems(rendered(directory), secret)
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_id)
def test_renderer_agrees_with_kubectl_kustomize(directory: Path) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=True
    ).stdout

    def key(doc: Resource) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    theirs = sorted((d for d in yaml.safe_load_all(out) if d), key=key)
    assert sorted(rendered(directory), key=key) == theirs


def test_overlays_set_a_namespace_and_keep_the_base() -> None:
    base_names = {(d["kind"], d["metadata"]["name"]) for d in rendered(BASE)}
    for overlay in KUSTOMIZATIONS[1:]:
        docs = rendered(overlay)
        assert {(d["kind"], d["metadata"]["name"]) for d in docs} == base_names
        assert all(d["metadata"].get("namespace") for d in docs), f"{overlay}: resource without namespace"


def test_processors_choice_is_documented() -> None:
    """Deployment vs StatefulSet: the manifest says which and why, and so does the README."""
    docs = rendered(BASE)
    kinds = {d["kind"] for d in docs if any(c.get("args", [""])[0] == "processors" for c in containers(d))}
    assert kinds in ({"Deployment"}, {"StatefulSet"})
    (kind,) = kinds
    manifest = (BASE / f"processors-{kind.lower()}.yaml").read_text()
    assert "changelog" in manifest and "StatefulSet" in manifest and "Deployment" in manifest
    assert "changelog" in (K8S / "README.md").read_text()


def test_topic_script_matches_topic_specs() -> None:
    problems = topic_script_problems(TOPIC_SCRIPT.read_text())
    assert not problems, "\n".join(problems)


def test_compose_file_matches_the_code() -> None:
    problems = compose_problems(load_compose())
    assert not problems, "\n".join(problems)


def test_dockerfile_matches_the_code() -> None:
    problems = dockerfile_problems(DOCKERFILE.read_text(), (ROOT / ".dockerignore").read_text())
    assert not problems, "\n".join(problems)


def yaml_files() -> list[Path]:
    conf = YamlLintConfig(file=str(ROOT / ".yamllint"))
    skip = {".venv", ".local", ".git", "node_modules"}
    return sorted(
        p
        for p in ROOT.rglob("*")
        if p.suffix in (".yaml", ".yml")
        and not skip & set(p.relative_to(ROOT).parts)
        and not conf.is_file_ignored(str(p.relative_to(ROOT)))
    )


def test_yamllint() -> None:
    conf = YamlLintConfig(file=str(ROOT / ".yamllint"))
    files = yaml_files()
    assert COMPOSE in files and len(files) > 10
    problems = [
        f"{_id(path)}:{p.line}:{p.column}: [{p.level}] {p.message} ({p.rule})"
        for path in files
        for p in linter.run(path.read_text(), conf, str(path))
    ]
    assert not problems, "\n".join(problems)


# --- negative tests: broken input must be reported ------------------------------------------------------


def _gateway_deployment() -> Resource:
    return copy.deepcopy(
        next(d for d in rendered(BASE) if d["kind"] == "Deployment" and d["metadata"]["name"] == "eventpipe-gateway")
    )


@pytest.mark.parametrize(
    "breakage",
    ["wrong type", "unknown field", "missing required field", "bad apiVersion"],
)
def test_a_broken_manifest_fails_schema_validation(breakage: str) -> None:
    doc = _gateway_deployment()
    container = doc["spec"]["template"]["spec"]["containers"][0]
    if breakage == "wrong type":
        container["ports"][0]["containerPort"] = "eight thousand"
    elif breakage == "unknown field":
        doc["spec"]["replica"] = 3  # typo of `replicas`: only strict validation catches it
    elif breakage == "missing required field":
        del doc["spec"]["selector"]
    else:
        doc["apiVersion"] = "apps/v1beta42"
    assert schema_problems(doc)


def test_a_broken_manifest_fails_schema_validation_from_yaml_text() -> None:
    text = (BASE / "gateway-service.yaml").read_text().replace("port: 8000", "port: not-a-port")
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert [p for d in docs for p in schema_problems(d)]


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("unknown subcommand", "eventpipe subcommand"),
        ("unknown variable", "EVENTPIPE_KAFKA_BROKERS is not read"),
        ("readiness path", "must GET /_ready"),
        ("ready marker", "run/sinks.ready"),
        ("missing configmap", "missing ConfigMap eventpipe-settings"),
        ("entrypoint", "ENTRYPOINT"),
    ],
)
def test_a_manifest_inconsistent_with_the_code_fails(breakage: str, expected: str) -> None:
    docs = [copy.deepcopy(d) for d in rendered(BASE)]
    secret = kustomize_lite.load_yaml_documents(BASE / "secret.example.yaml")[0]
    gateway = next(d for d in docs if d["metadata"]["name"] == "eventpipe-gateway" and d["kind"] == "Deployment")
    sink = next(d for d in docs if d["metadata"]["name"] == "eventpipe-sink")
    gw = gateway["spec"]["template"]["spec"]["containers"][0]
    if breakage == "unknown subcommand":
        gw["args"] = ["gatewy"]
    elif breakage == "unknown variable":
        next(d for d in docs if d["kind"] == "ConfigMap" and "EVENTPIPE_PORT" in d["data"])["data"][
            "EVENTPIPE_KAFKA_BROKERS"
        ] = "kafka:9092"
    elif breakage == "readiness path":
        gw["readinessProbe"]["httpGet"]["path"] = "/ready"
    elif breakage == "ready marker":
        probe = sink["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
        probe[-1] = probe[-1].replace("sink.ready", "sinks.ready")
    elif breakage == "missing configmap":
        gw["envFrom"][0]["configMapRef"]["name"] = "eventpipe-settings"
    else:
        gw["command"] = ["python", "-m", "gateway"]
    problems = contract_problems(docs, secret)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("subcommand", "not an eventpipe subcommand"),
        ("variable", "EVENTPIPE_LISTEN is not read"),
        ("port", "no published port"),
        ("depends_on", "unknown service zookeeper"),
        ("typo", "'depend_on' was unexpected"),
        ("condition", "'service_done' is not one of"),
        ("grace", "stop_grace_period"),
    ],
)
def test_a_broken_compose_file_fails(breakage: str, expected: str) -> None:
    compose = load_compose()
    services = compose["services"]
    if breakage == "subcommand":
        services["sink"]["command"] = ["sinks"]
    elif breakage == "variable":
        services["gateway"]["environment"] = {**services["gateway"]["environment"], "EVENTPIPE_LISTEN": "0.0.0.0"}
    elif breakage == "port":
        services["gateway"]["ports"] = ["8000:8080"]
    elif breakage == "depends_on":
        services["gateway"]["depends_on"] = {"zookeeper": {"condition": "service_started"}}
    elif breakage == "typo":
        services["processors"]["depend_on"] = services["processors"].pop("depends_on")
    elif breakage == "condition":
        services["sink"]["depends_on"]["init"]["condition"] = "service_done"
    else:
        services["gateway"]["stop_grace_period"] = "5s"
    problems = compose_problems(compose)
    assert any(expected in p for p in problems), problems


def test_a_broken_dockerfile_fails() -> None:
    good = DOCKERFILE.read_text()
    ignore = (ROOT / ".dockerignore").read_text()
    assert not dockerfile_problems(good, ignore)
    assert dockerfile_problems(good.replace('ENTRYPOINT ["eventpipe"]', 'ENTRYPOINT ["python", "-m", "x"]'), ignore)
    assert dockerfile_problems(good.replace("USER 10001:10001", "USER root"), ignore)
    assert dockerfile_problems(good.replace("COPY processors ./processors\n", ""), ignore)
    assert dockerfile_problems(good, ignore + "\neventpipe\n")


def test_a_topic_script_missing_a_topic_fails() -> None:
    script = TOPIC_SCRIPT.read_text()
    assert topic_script_problems(script.replace("create teams 1", "create teams 3"))
    assert topic_script_problems(script.replace("create events_raw", "# create events_raw"))
    assert topic_script_problems(script + '\ncreate event_raw "$partitions"\n')


def test_the_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [../x]\ncommonLabels: {a: b}\n")
    with pytest.raises(kustomize_lite.Unsupported):
        kustomize_lite.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{BASE}]\npatches: [{{path: p.yaml}}]\n")
    (tmp_path / "p.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: nope}\n")
    with pytest.raises(kustomize_lite.Unsupported):
        kustomize_lite.render(tmp_path)
