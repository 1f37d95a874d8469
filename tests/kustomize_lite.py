"""A small kustomize renderer for the tests: enough of kustomize for deploy/k8s, and loud about the rest.

CI must render the overlays without assuming a kustomize binary (``kubectl kustomize`` exists on some
machines only), so this implements the subset the manifests use — ``resources`` (files and
directories), ``namespace``, ``images``, ``replicas``, ``patches`` given as strategic-merge patch files,
and ``configMapGenerator`` (files/literals) with ``disableNameSuffixHash`` — and raises
:class:`Unsupported` for any other field, so a manifest that grows past it fails instead of rendering
wrong. tests/test_unit_deploy.py compares its output with ``kubectl kustomize`` wherever kubectl exists.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "replicas",
    "patches",
    "configMapGenerator",
    "generatorOptions",
}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}
SCALABLE_KINDS = {"Deployment", "StatefulSet", "ReplicaSet", "ReplicationController"}
# Strategic-merge keys of the lists the patches may touch (from the Kubernetes API's patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


class Unsupported(Exception):
    """The kustomization uses something this renderer does not implement."""


def load_yaml_documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def render(directory: Path) -> list[Resource]:
    """Resources of the kustomization in ``directory``, transformed as ``kustomize build`` would."""
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    if not kfile.exists():
        raise Unsupported(f"{directory} has no kustomization.yaml")
    kust = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(kust) - SUPPORTED_FIELDS
    if unknown:
        raise Unsupported(f"{kfile}: fields not implemented here: {sorted(unknown)}")
    if kust.get("kind", "Kustomization") != "Kustomization":
        raise Unsupported(f"{kfile}: kind {kust['kind']!r}")

    resources: list[Resource] = []
    for entry in kust.get("resources", []):
        path = (directory / entry).resolve()
        resources += render(path) if path.is_dir() else load_yaml_documents(path)
    resources += _generate_config_maps(directory, kust)
    _check_unique(resources, kfile)

    for patch_entry in kust.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise Unsupported(f"{kfile}: only `patches: - path: FILE` (strategic merge) is implemented")
        for patch in load_yaml_documents(directory / patch_entry["path"]):
            index = _find(resources, patch)
            resources[index] = strategic_merge(resources[index], patch)

    namespace = kust.get("namespace")
    if namespace:
        for res in resources:
            if res["kind"] not in CLUSTER_SCOPED_KINDS:
                res["metadata"]["namespace"] = namespace

    for rep in kust.get("replicas", []):
        hits = [r for r in resources if r["kind"] in SCALABLE_KINDS and r["metadata"]["name"] == rep["name"]]
        if not hits:
            raise Unsupported(f"{kfile}: replicas for unknown workload {rep['name']!r}")
        for res in hits:
            res["spec"]["replicas"] = rep["count"]

    for image in kust.get("images", []):
        if not [res for res in resources if _retag(res, image)]:  # every resource, no short-circuit
            raise Unsupported(f"{kfile}: image {image['name']!r} is used by no container")
    return resources


def _generate_config_maps(directory: Path, kust: dict[str, Any]) -> list[Resource]:
    options = kust.get("generatorOptions", {})
    generated = []
    for gen in kust.get("configMapGenerator", []):
        if not options.get("disableNameSuffixHash"):
            raise Unsupported("configMapGenerator needs generatorOptions.disableNameSuffixHash here")
        if set(gen) - {"name", "files", "literals"}:
            raise Unsupported(f"configMapGenerator fields: {sorted(gen)}")
        data: dict[str, str] = {}
        for spec in gen.get("files", []):
            key, _, source = spec.rpartition("=")
            data[key or Path(source).name] = (directory / source).read_text()
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        metadata: dict[str, Any] = {"name": gen["name"]}
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        if options.get("annotations"):
            metadata["annotations"] = dict(options["annotations"])
        generated.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return generated


def _check_unique(resources: list[Resource], where: Path) -> None:
    seen = set()
    for res in resources:
        key = (res["kind"], res["metadata"]["name"])
        if key in seen:
            raise Unsupported(f"{where}: {key} defined twice")
        seen.add(key)


def _find(resources: list[Resource], patch: Resource) -> int:
    want = (patch.get("kind"), patch.get("metadata", {}).get("name"))
    hits = [i for i, r in enumerate(resources) if (r["kind"], r["metadata"]["name"]) == want]
    if len(hits) != 1:
        raise Unsupported(f"patch target {want} matches {len(hits)} resources")
    return hits[0]


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes strategic merge of ``patch`` into ``target`` (maps merge, keyed lists merge by key)."""
    if isinstance(patch, dict):
        if any(k.startswith("$") for k in patch):
            raise Unsupported(f"strategic-merge directives ({[k for k in patch if k.startswith('$')]})")
        if not isinstance(target, dict):
            return copy.deepcopy(patch)
        merged = copy.deepcopy(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(target, list):
        key = MERGE_KEYS[field]
        merged_list = copy.deepcopy(target)
        for item in patch:
            match = [i for i, old in enumerate(merged_list) if old.get(key) == item.get(key)]
            if match:
                merged_list[match[0]] = strategic_merge(merged_list[match[0]], item, field)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)  # scalars and lists without a merge key are replaced


def pod_spec(res: Resource) -> dict[str, Any] | None:
    """The pod spec of a workload (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod), else None."""
    kind = res["kind"]
    if kind == "Pod":
        return res["spec"]
    if kind == "CronJob":
        return res["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in SCALABLE_KINDS | {"DaemonSet", "Job"}:
        return res["spec"]["template"]["spec"]
    return None


def containers(res: Resource) -> list[dict[str, Any]]:
    spec = pod_spec(res)
    if spec is None:
        return []
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def split_image(image: str) -> tuple[str, str]:
    """``registry:5000/name:tag`` -> (``registry:5000/name``, ``:tag``); digests keep their ``@``."""
    if "@" in image:
        name, _, digest = image.partition("@")
        return name, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def _retag(res: Resource, image: dict[str, Any]) -> bool:
    changed = False
    for container in containers(res):
        name, tag = split_image(container["image"])
        if name != image["name"]:
            continue
        if "digest" in image:
            tag = "@" + image["digest"]
        elif "newTag" in image:
            tag = ":" + str(image["newTag"])
        container["image"] = image.get("newName", name) + tag
        changed = True
    return changed
