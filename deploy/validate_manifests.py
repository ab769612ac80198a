#!/usr/bin/env python3
"""Offline validation of Ferrum's Kubernetes manifests: what `make chart-check` runs.

With no file arguments it checks everything the project ships:

1. the Helm chart deploy/helm/ferrum rendered by scripts/render-chart.py with its default
   values and with each variant in deploy/helm/ferrum/ci/*.yaml (S3 repository, S3 with a
   chart-made Secret, ServiceMonitor, HorizontalPodAutoscaler, PersistentVolumeClaim, ...);
2. the plain manifests in deploy/manifests/, and that each is exactly what the renderer makes
   now (MANIFESTS below says from which values);
3. the KServe ClusterServingRuntime and example InferenceServices in deploy/kserve/.

Each document is checked against

* the Kubernetes OpenAPI schemas bundled by kubernetes-validate (strict: unknown fields are
  errors), for every Kubernetes version in KUBERNETES_VERSIONS;
* for custom resources (ServiceMonitor, ClusterServingRuntime, ServingRuntime,
  InferenceService), the JSON schemas in deploy/schemas/, which reuse the Kubernetes
  definitions (Container, Volume, ...) of the same version;
* the rules the API server applies beyond the schemas and the links between objects: name,
  label and port-name formats, requests not above limits, a Deployment's selector matching
  its pod labels, volume mounts naming volumes, probes naming container ports, Services,
  PodDisruptionBudgets and ServiceMonitors selecting something, HorizontalPodAutoscalers
  targeting a Deployment of the same set, ConfigMap and Secret keys that exist, and KServe
  placeholders that parse and InferenceServices that their runtime supports.

A document of a kind with no schema is an error, never skipped.

    deploy/validate_manifests.py                    # everything (make chart-check)
    deploy/validate_manifests.py my-isvc.yaml ...    # these files, each one set
    deploy/validate_manifests.py --write-manifests   # regenerate deploy/manifests/
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional

try:
    import jsonschema  # noqa: F401  (used where the documents are checked)
    import kubernetes_validate  # noqa: F401  (its bundled schemas)
    import yaml
except ImportError as missing:  # pragma: no cover - told to the user
    raise SystemExit(f"{Path(__file__).name} needs kubernetes-validate, PyYAML and jsonschema "
                     f"({missing}): pip install -r deploy/requirements.txt, or run "
                     "`make chart-check`, which sets them up") from None

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "ferrum"
MANIFESTS_DIR = ROOT / "deploy" / "manifests"
KSERVE_DIR = ROOT / "deploy" / "kserve"
SCHEMAS_DIR = ROOT / "deploy" / "schemas"
RENDERER = ROOT / "scripts" / "render-chart.py"

# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest whose
# schemas kubernetes-validate bundles ("latest").
KUBERNETES_VERSIONS = ("1.30", "latest")

# The plain manifests shipped for kubectl users: file -> values files (relative to the
# repository) they are rendered from, with release name ferrum.
MANIFESTS = {
    "ferrum.yaml": (),
    "ferrum-s3.yaml": ("deploy/manifests/values-s3.yaml",),
}


# --------------------------------------------------------------------------- helpers


def load_renderer():
    """scripts/render-chart.py as a module."""
    spec = importlib.util.spec_from_file_location("render_chart", RENDERER)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def load_documents(text: str, source: str) -> list[tuple[str, Any]]:
    """The non-empty YAML documents of a file, each with where it came from."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        return [(source, _YamlError(str(exc)))]
    return [(source, d) for d in docs]


class _YamlError:
    """A file that is not valid YAML (reported as a problem)."""

    def __init__(self, message: str) -> None:
        self.message = message


def ident(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "?"
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"),
                                                                   dict) else "?"
    return f"{doc.get('kind', '?')}/{name}"


# --------------------------------------------------------------------------- schemas


@lru_cache(maxsize=None)
def kubernetes_schema_dir(version: str) -> Path:
    """The strict schema folder kubernetes-validate bundles for a Kubernetes version."""
    import kubernetes_validate.utils as kv

    if version == "latest":
        version = kv.latest_version()
    wanted = kv.major_minor(version)
    candidates = [v for v in kv.all_versions() if kv.major_minor(v) == wanted]
    if not candidates:
        raise SystemExit(f"kubernetes-validate {kv.__version__} has no schemas for "
                         f"Kubernetes {version}")
    base = Path(kv.__file__).parent / "kubernetes-json-schema"
    return base / f"v{candidates[-1]}-local-strict"


@lru_cache(maxsize=None)
def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def custom_schemas() -> dict[tuple[str, str], Path]:
    """(apiVersion, kind) -> schema file, from deploy/schemas/*.json."""
    found = {}
    for path in sorted(SCHEMAS_DIR.glob("*.json")):
        schema = _json(path)
        api = schema["properties"]["apiVersion"]["const"]
        for kind in schema["properties"]["kind"]["enum"]:
            found[(api, kind)] = path
    return found


@lru_cache(maxsize=None)
def _registry(version: str):
    from referencing import Registry, Resource

    folder = kubernetes_schema_dir(version)
    resources = [Resource.from_contents(_json(folder / "_definitions.json"))]
    resources += [Resource.from_contents(_json(p)) for p in custom_schemas().values()]
    registry = Registry()
    for resource in resources:
        registry = registry.with_resource(resource.id(), resource)
    return registry


def schema_for(doc: dict, version: str) -> tuple[Optional[Any], str]:
    """The schema for a document and where it is from ("kubernetes", "deploy/schemas"), or
    (None, "missing")."""
    api, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api, str) or not isinstance(kind, str):
        return None, "missing"
    if (api, kind) in custom_schemas():
        return _json(custom_schemas()[(api, kind)]), "deploy/schemas"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api)
    path = kubernetes_schema_dir(version) / f"{kind.lower()}-{group_version}.json"
    if path.is_file():
        return _json(path), "kubernetes"
    return None, "missing"


def schema_problems(source: str, doc: dict, version: str) -> list[tuple[str, str]]:
    """(problem, which schema said so) pairs of one document against one version."""
    import jsonschema

    label = "Kubernetes " + kubernetes_schema_dir(version).name.split("-")[0][1:]
    schema, origin = schema_for(doc, version)
    if schema is None:
        return [(f"{source}: {ident(doc)}: no schema for {doc.get('kind')} "
                 f"{doc.get('apiVersion')} in Kubernetes or deploy/schemas", label)]
    if origin != "kubernetes":
        label = f"deploy/schemas with {label} types"
    validator = jsonschema.Draft202012Validator(schema, registry=_registry(version))
    problems = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path))):
        path = ".".join(str(p) for p in error.absolute_path) or "(document)"
        problems.append((f"{source}: {ident(doc)}: {path}: {_short(error)}", label))
    return problems


def _short(error) -> str:
    """A schema error's message, with the long ones (oneOf over a whole object) cut down."""
    message = error.message
    if error.validator in ("oneOf", "anyOf") and error.context:
        best = min(error.context, key=lambda e: len(e.message))
        message = f"{best.message} (no alternative matched)"
    return message if len(message) <= 300 else message[:297] + "..."


# --------------------------------------------------------------------------- API server rules

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

# Kinds whose names must be DNS-1035 labels (they become DNS names or ports of them).
DNS1035_KINDS = {"Service", "InferenceService"}

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i|[mkMGTPE]|)$")
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: Any) -> Optional[float]:
    """A Kubernetes resource quantity as a number, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = _QUANTITY.match(str(value))
    if not m:
        return None
    number, suffix = m.groups()
    try:
        base = float(number)
    except ValueError:
        return None
    if suffix[:1] in ("e", "E"):
        return base * 10 ** int(suffix[1:])
    return base * _SUFFIX[suffix]


def check_qualified_key(key: str) -> Optional[str]:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return f"key '{key}': prefix must be a DNS subdomain"
    if len(name) > 63 or not QUALIFIED_NAME.match(name):
        return f"key '{key}': name part must be 63 characters or fewer, alphanumeric, '-', '_' or '.'"
    return None


def check_port_name(name: str) -> Optional[str]:
    if len(name) > 15 or not PORT_NAME.match(name) or "--" in name or \
            not re.search(r"[a-z]", name):
        return (f"port name '{name}' must be an IANA service name (at most 15 characters, "
                "lowercase letters, digits and '-', with a letter)")
    return None


def selector_matches(selector: Any, labels: Any) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    if not isinstance(selector, dict) or not isinstance(labels, dict):
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, op = expression.get("key"), expression.get("operator")
        values = expression.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return bool(selector.get("matchLabels") or selector.get("matchExpressions"))


class _Set:
    """The documents checked together (one render, one file): what cross-references see."""

    def __init__(self, docs: list[tuple[str, dict]]) -> None:
        self.docs = docs

    def of_kind(self, *kinds: str) -> list[tuple[str, dict]]:
        return [(s, d) for s, d in self.docs if d.get("kind") in kinds]

    def named(self, kind: str, name: str) -> Optional[dict]:
        for _, doc in self.of_kind(kind):
            if (doc.get("metadata") or {}).get("name") == name:
                return doc
        return None

    def pod_templates(self) -> list[tuple[str, dict, dict]]:
        """(source, workload, pod template) of every workload in the set."""
        out = []
        for source, doc in self.of_kind("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            template = ((doc.get("spec") or {}).get("template")) or {}
            out.append((source, doc, template))
        return out


def semantic_problems(docs: list[tuple[str, dict]]) -> list[str]:
    """What the API server (and the objects' links) would refuse beyond the schemas."""
    problems: list[str] = []
    group = _Set(docs)
    seen: dict[tuple, str] = {}
    for source, doc in docs:
        where = f"{source}: {ident(doc)}"
        meta = doc.get("metadata") or {}
        name = meta.get("name")
        kind = doc.get("kind")
        key = (kind, doc.get("apiVersion"), meta.get("namespace"), name)
        if key in seen:
            problems.append(f"{where}: defined twice (also in {seen[key]})")
        seen[key] = source
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: metadata.name is missing")
        elif kind in DNS1035_KINDS:
            if len(name) > 63 or not DNS1035_LABEL.match(name):
                problems.append(f"{where}: name '{name}' must be a DNS-1035 label (lowercase "
                                "letters, digits and '-', starting with a letter, 63 at most)")
        elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
            problems.append(f"{where}: name '{name}' must be a DNS-1123 subdomain")
        problems += _labels_problems(where, "metadata", meta)
        checker = _KIND_CHECKS.get(kind)
        if checker:
            problems += checker(where, doc, group)
    return problems


def _labels_problems(where: str, path: str, meta: dict) -> list[str]:
    problems = []
    for key, value in (meta.get("labels") or {}).items():
        issue = check_qualified_key(str(key))
        if issue:
            problems.append(f"{where}: {path}.labels: {issue}")
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            problems.append(f"{where}: {path}.labels['{key}']: value {value!r} must be a "
                            "string of at most 63 characters: alphanumerics, '-', '_', '.'")
    for key in (meta.get("annotations") or {}):
        issue = check_qualified_key(str(key))
        if issue:
            problems.append(f"{where}: {path}.annotations: {issue}")
    return problems


def _pod_problems(where: str, template: dict, group: _Set) -> list[str]:
    problems = []
    spec = template.get("spec") or {}
    problems += _labels_problems(where, "spec.template.metadata",
                                 template.get("metadata") or {})
    volumes = {}
    for i, volume in enumerate(spec.get("volumes") or []):
        vname = volume.get("name", "")
        if vname in volumes:
            problems.append(f"{where}: volume '{vname}' is defined twice")
        volumes[vname] = volume
        if len(vname) > 63 or not DNS1123_LABEL.match(vname):
            problems.append(f"{where}: volume name '{vname}' must be a DNS-1123 label")
        problems += _config_volume_problems(where, volume, group)
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    names = set()
    for container in containers:
        cname = container.get("name", "")
        cwhere = f"{where}: container '{cname}'"
        if cname in names:
            problems.append(f"{cwhere}: two containers have this name")
        names.add(cname)
        if len(cname) > 63 or not DNS1123_LABEL.match(cname):
            problems.append(f"{cwhere}: name must be a DNS-1123 label")
        problems += _container_problems(cwhere, container, volumes, group)
    return problems


def _config_volume_problems(where: str, volume: dict, group: _Set) -> list[str]:
    problems = []
    for source_kind, field, data_fields in (("ConfigMap", "configMap", ("data", "binaryData")),
                                            ("Secret", "secret", ("data", "stringData"))):
        source = volume.get(field)
        if not isinstance(source, dict):
            continue
        ref_name = source.get("name") if field == "configMap" else source.get("secretName")
        target = group.named(source_kind, ref_name) if ref_name else None
        keys = set()
        if target is not None:
            for data_field in data_fields:
                keys |= set((target.get(data_field) or {}).keys())
        paths = set()
        for item in source.get("items") or []:
            key, path = item.get("key", ""), item.get("path", "")
            if not CONFIG_KEY.match(key):
                problems.append(f"{where}: volume '{volume.get('name')}': key '{key}' is not a "
                                "valid ConfigMap/Secret key")
            if target is not None and key not in keys and not source.get("optional"):
                problems.append(f"{where}: volume '{volume.get('name')}': {source_kind} "
                                f"'{ref_name}' has no key '{key}'")
            if path.startswith("/") or ".." in path.split("/"):
                problems.append(f"{where}: volume '{volume.get('name')}': path '{path}' must "
                                "be relative without '..'")
            if path in paths:
                problems.append(f"{where}: volume '{volume.get('name')}': path '{path}' twice")
            paths.add(path)
    return problems


def _container_problems(where: str, container: dict, volumes: dict, group: _Set) -> list[str]:
    problems = []
    ports = {}
    numbers = set()
    for port in container.get("ports") or []:
        pname = port.get("name")
        if pname is not None:
            issue = check_port_name(pname)
            if issue:
                problems.append(f"{where}: {issue}")
            if pname in ports:
                problems.append(f"{where}: port name '{pname}' used twice")
            ports[pname] = port
        number = (port.get("containerPort"), port.get("protocol", "TCP"))
        if number in numbers:
            problems.append(f"{where}: containerPort {number[0]}/{number[1]} listed twice")
        numbers.add(number)
    for field, allowed in (("imagePullPolicy", ("Always", "IfNotPresent", "Never")),
                           ("terminationMessagePolicy", ("File", "FallbackToLogsOnError"))):
        if field in container and container[field] not in allowed:
            problems.append(f"{where}: {field} '{container[field]}' is not one of "
                            f"{', '.join(allowed)}")
    for port in container.get("ports") or []:
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            problems.append(f"{where}: port protocol '{port.get('protocol')}' is not TCP, UDP "
                            "or SCTP")
    env_names = set()
    for env in container.get("env") or []:
        ename = env.get("name", "")
        if not ENV_NAME.match(ename):
            problems.append(f"{where}: environment variable name '{ename}' is not valid")
        if ename in env_names:
            problems.append(f"{where}: environment variable '{ename}' is set twice")
        env_names.add(ename)
        ref = ((env.get("valueFrom") or {}).get("secretKeyRef")
               or (env.get("valueFrom") or {}).get("configMapKeyRef"))
        if isinstance(ref, dict):
            is_secret = "secretKeyRef" in (env.get("valueFrom") or {})
            target = group.named("Secret" if is_secret else "ConfigMap", ref.get("name", ""))
            if target is not None and not ref.get("optional"):
                keys = set()
                for field in (("data", "stringData") if is_secret else ("data", "binaryData")):
                    keys |= set((target.get(field) or {}).keys())
                if ref.get("key") not in keys:
                    problems.append(f"{where}: env {ename}: {'Secret' if is_secret else 'ConfigMap'}"
                                    f" '{ref.get('name')}' has no key '{ref.get('key')}'")
    mount_paths = set()
    for mount in container.get("volumeMounts") or []:
        if mount.get("name") not in volumes:
            problems.append(f"{where}: volumeMount '{mount.get('name')}' names no volume of "
                            "the pod")
        if mount.get("mountPath") in mount_paths:
            problems.append(f"{where}: two volumes are mounted at {mount.get('mountPath')}")
        mount_paths.add(mount.get("mountPath"))
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if not isinstance(probe, dict):
            continue
        for handler in ("httpGet", "tcpSocket", "grpc"):
            port = (probe.get(handler) or {}).get("port")
            if isinstance(port, str) and port not in ports:
                problems.append(f"{where}: {probe_name} uses port '{port}', which the container "
                                "does not name")
        if probe_name in ("livenessProbe", "startupProbe") and probe.get("successThreshold",
                                                                          1) != 1:
            problems.append(f"{where}: {probe_name}.successThreshold must be 1")
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for resource_name, value in list(requests.items()) + list(limits.items()):
        if quantity(value) is None:
            problems.append(f"{where}: resources: '{value}' is not a quantity "
                            f"({resource_name})")
    for resource_name, request in requests.items():
        if resource_name in limits:
            low, high = quantity(request), quantity(limits[resource_name])
            if low is not None and high is not None and low > high:
                problems.append(f"{where}: resources: {resource_name} request {request} is "
                                f"above its limit {limits[resource_name]}")
    return problems


def _workload_problems(where: str, doc: dict, group: _Set) -> list[str]:
    spec = doc.get("spec") or {}
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    problems = []
    if not selector_matches(spec.get("selector"), labels):
        problems.append(f"{where}: spec.selector does not match the pod template's labels")
    return problems + _pod_problems(where, template, group)


def _service_problems(where: str, doc: dict, group: _Set) -> list[str]:
    spec = doc.get("spec") or {}
    problems = []
    names = set()
    for port in spec.get("ports") or []:
        pname = port.get("name")
        if pname is not None:
            issue = check_port_name(pname)
            if issue:
                problems.append(f"{where}: {issue}")
            if pname in names:
                problems.append(f"{where}: port name '{pname}' used twice")
            names.add(pname)
    selector = spec.get("selector")
    workloads = group.pod_templates()
    if selector and workloads:
        selected = [t for _, _, t in workloads
                    if selector_matches({"matchLabels": selector},
                                        (t.get("metadata") or {}).get("labels"))]
        if not selected:
            problems.append(f"{where}: spec.selector selects none of the pods defined beside it")
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for template in selected:
                container_ports = [p for c in (template.get("spec") or {}).get("containers", [])
                                   for p in c.get("ports") or []]
                if isinstance(target, str) and target not in {p.get("name")
                                                              for p in container_ports}:
                    problems.append(f"{where}: port '{port.get('name')}' targets '{target}', "
                                    "which the selected pods do not name")
                if isinstance(target, int) and target not in {p.get("containerPort")
                                                              for p in container_ports}:
                    problems.append(f"{where}: port '{port.get('name')}' targets {target}, "
                                    "which the selected pods do not expose")
    return problems


def _hpa_problems(where: str, doc: dict, group: _Set) -> list[str]:
    spec = doc.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    problems = []
    target = group.named(ref.get("kind", ""), ref.get("name", ""))
    if target is None:
        problems.append(f"{where}: scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not "
                        "defined beside it")
    elif (target.get("spec") or {}).get("replicas") is not None:
        problems.append(f"{where}: {ref.get('kind')}/{ref.get('name')} sets spec.replicas, "
                        "which fights the autoscaler on every apply")
    if spec.get("minReplicas", 1) > spec.get("maxReplicas", 0):
        problems.append(f"{where}: minReplicas is above maxReplicas")
    for metric in spec.get("metrics") or []:
        if metric.get("type") == "Pods":
            value = (((metric.get("pods") or {}).get("target")) or {}).get("averageValue")
            if quantity(value) is None:
                problems.append(f"{where}: Pods metric averageValue {value!r} is not a quantity")
    return problems


def _selects_pods(where: str, doc: dict, group: _Set) -> list[str]:
    selector = (doc.get("spec") or {}).get("selector")
    workloads = group.pod_templates()
    if workloads and not any(selector_matches(selector, (t.get("metadata") or {}).get("labels"))
                             for _, _, t in workloads):
        return [f"{where}: spec.selector selects none of the pods defined beside it"]
    return []


def _configmap_problems(where: str, doc: dict, group: _Set) -> list[str]:
    problems = []
    for field in ("data", "binaryData"):
        for key in (doc.get(field) or {}):
            if not CONFIG_KEY.match(str(key)) or key in (".", "..") or \
                    str(key).startswith(".."):
                problems.append(f"{where}: {field} key '{key}' is not valid (letters, digits, "
                                "'-', '_' and '.')")
    return problems


def _servicemonitor_problems(where: str, doc: dict, group: _Set) -> list[str]:
    spec = doc.get("spec") or {}
    services = [d for _, d in group.of_kind("Service")
                if selector_matches(spec.get("selector"), (d.get("metadata") or {}).get("labels"))]
    if not group.of_kind("Service"):
        return []
    if not services:
        return [f"{where}: spec.selector selects none of the Services defined beside it"]
    problems = []
    for endpoint in spec.get("endpoints") or []:
        port = endpoint.get("port")
        if port is not None and not any(port in {p.get("name") for p in
                                                 (s.get("spec") or {}).get("ports", [])}
                                        for s in services):
            problems.append(f"{where}: endpoint port '{port}' is not a port name of the "
                            "selected Service")
    return problems


def _runtime_problems(where: str, doc: dict, group: _Set) -> list[str]:
    """KServe fills {{ }} placeholders in a runtime's containers from the InferenceService's
    metadata (Go templates): they must parse and run."""
    renderer = load_renderer()
    problems = []
    spec = doc.get("spec") or {}
    samples = [{"Name": "example", "Namespace": "default", "Labels": None, "Annotations": None},
               {"Name": "example", "Namespace": "default", "Labels": {"a": "b"},
                "Annotations": {"a": "b"}}]
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for container in spec.get("containers") or []:
        cwhere = f"{where}: container '{container.get('name')}'"
        problems += _container_problems(cwhere, container, volumes, group)
        text = json.dumps(container)
        for sample in samples:
            try:
                json.loads(renderer.render_string(text, sample, "placeholders"))
            except renderer.RenderError as exc:
                problems.append(f"{cwhere}: KServe placeholder: {exc}")
                break
            except ValueError as exc:
                problems.append(f"{cwhere}: KServe placeholders break its JSON: {exc}")
                break
    return problems


def _isvc_problems(where: str, doc: dict, group: _Set) -> list[str]:
    predictor = ((doc.get("spec") or {}).get("predictor")) or {}
    model = predictor.get("model") or {}
    runtime_name = model.get("runtime")
    runtime = None
    for kind in ("ClusterServingRuntime", "ServingRuntime"):
        runtime = runtime or (group.named(kind, runtime_name) if runtime_name else None)
    # KServe merges the model's container fields into the runtime's container, and the
    # predictor's volumes into the runtime's: mounts may name either. Without the runtime
    # at hand, the mounts cannot be checked.
    volumes = {v.get("name"): v for v in predictor.get("volumes") or []}
    if runtime is None:
        volumes.update({m.get("name"): {} for m in model.get("volumeMounts") or []})
    else:
        volumes.update({v.get("name"): v for v in (runtime.get("spec") or {}).get("volumes")
                        or []})
    problems = _container_problems(f"{where}: model", model, volumes, group)
    if runtime is None:
        return problems
    spec = runtime.get("spec") or {}
    fmt = model.get("modelFormat") or {}
    formats = spec.get("supportedModelFormats") or []
    matching = [f for f in formats if f.get("name") == fmt.get("name")]
    if not fmt.get("name"):
        pass  # the schema reports the missing modelFormat
    elif not matching:
        problems.append(f"{where}: runtime '{runtime_name}' does not support model format "
                        f"'{fmt.get('name')}'")
    elif fmt.get("version") and not any(
            str(fmt["version"]).split(".")[0] == str(f.get("version", "")).split(".")[0]
            for f in matching):
        problems.append(f"{where}: runtime '{runtime_name}' supports no version "
                        f"{fmt['version']} of '{fmt.get('name')}'")
    protocol = model.get("protocolVersion")
    if protocol and protocol not in (spec.get("protocolVersions") or []):
        problems.append(f"{where}: runtime '{runtime_name}' does not speak {protocol}")
    if protocol == "grpc-v2" and not any(p.get("name") == "h2c"
                                         for p in model.get("ports") or []):
        problems.append(f"{where}: grpc-v2 needs a container port named h2c (KServe routes "
                        "gRPC to it)")
    return problems


_KIND_CHECKS = {
    "Deployment": _workload_problems,
    "StatefulSet": _workload_problems,
    "DaemonSet": _workload_problems,
    "Service": _service_problems,
    "HorizontalPodAutoscaler": _hpa_problems,
    "PodDisruptionBudget": _selects_pods,
    "ConfigMap": _configmap_problems,
    "ServiceMonitor": _servicemonitor_problems,
    "ClusterServingRuntime": _runtime_problems,
    "ServingRuntime": _runtime_problems,
    "InferenceService": _isvc_problems,
}


# --------------------------------------------------------------------------- checking


def validate_documents(docs: Iterable[tuple[str, Any]],
                       versions: Iterable[str] = KUBERNETES_VERSIONS) -> list[str]:
    """Problems of one set of documents (empty: valid)."""
    docs = list(docs)
    problems: list[str] = []
    good: list[tuple[str, dict]] = []
    for source, doc in docs:
        if isinstance(doc, _YamlError):
            problems.append(f"{source}: not valid YAML: {doc.message}")
        elif not isinstance(doc, dict):
            problems.append(f"{source}: a document is not a map")
        else:
            good.append((source, doc))
    if not good and not problems:
        problems.append(f"{', '.join(sorted({s for s, _ in docs})) or 'input'}: no documents")
    # The same problem found against several versions is reported once, naming them all.
    by_message: dict[str, list[str]] = {}
    for version in versions:
        for source, doc in good:
            for message, label in schema_problems(source, doc, version):
                labels = by_message.setdefault(message, [])
                if label not in labels:
                    labels.append(label)
    problems += [f"{message} ({', '.join(labels)})" for message, labels in by_message.items()]
    problems += semantic_problems(good)
    return list(dict.fromkeys(problems))


def validate_text(text: str, source: str,
                  versions: Iterable[str] = KUBERNETES_VERSIONS) -> list[str]:
    return validate_documents(load_documents(text, source), versions)


def chart_variants() -> dict[str, tuple[str, ...]]:
    """Name -> values files of every chart render that is checked."""
    variants: dict[str, tuple[str, ...]] = {"default values": ()}
    for path in sorted((CHART / "ci").glob("*.yaml")):
        variants[rel(path)] = (str(path),)
    return variants


def render(values_files: Iterable[str] = (), sets: Iterable[str] = ()) -> str:
    renderer = load_renderer()
    return renderer.to_text(renderer.render_chart(CHART, list(values_files), list(sets)))


def manifest_header(values_files: tuple[str, ...]) -> str:
    command = "scripts/render-chart.py deploy/helm/ferrum" + "".join(
        f" -f {v}" for v in values_files)
    return (f"# Generated by `make manifests` ({command}).\n"
            "# Do not edit it in the repository: change the chart or the values, then run\n"
            "# `make manifests`. A copy you deploy is yours to edit.\n")


def expected_manifest(name: str) -> str:
    values = MANIFESTS[name]
    return manifest_header(values) + render([str(ROOT / v) for v in values])


def write_manifests() -> list[Path]:
    written = []
    for name in MANIFESTS:
        path = MANIFESTS_DIR / name
        path.write_text(expected_manifest(name), encoding="utf-8")
        written.append(path)
    return written


def check_all(versions: Iterable[str] = KUBERNETES_VERSIONS) -> tuple[list[str], list[str]]:
    """Everything `make chart-check` checks: (problems, what was checked)."""
    renderer = load_renderer()
    versions = tuple(versions)
    problems: list[str] = []
    checked: list[str] = []
    for name, values in chart_variants().items():
        try:
            text = render(values)
        except renderer.RenderError as exc:
            problems.append(f"chart with {name}: does not render: {exc}")
            continue
        found = validate_text(text, f"chart ({name})", versions)
        problems += found
        checked.append(f"chart rendered with {name}: {text.count('# Source:')} documents")
    for name in MANIFESTS:
        path = MANIFESTS_DIR / name
        if not path.is_file():
            problems.append(f"{rel(path)}: missing; run `make manifests`")
            continue
        text = path.read_text(encoding="utf-8")
        problems += validate_text(text, rel(path), versions)
        try:
            if text != expected_manifest(name):
                problems.append(f"{rel(path)}: not what the chart renders now; run "
                                "`make manifests`")
        except renderer.RenderError as exc:
            problems.append(f"{rel(path)}: its values do not render: {exc}")
        checked.append(rel(path))
    extra = sorted(p.name for p in MANIFESTS_DIR.glob("*.yaml")
                   if p.name not in MANIFESTS and not p.name.startswith("values-"))
    for name in extra:
        problems.append(f"deploy/manifests/{name}: not generated by `make manifests` "
                        "(list it in MANIFESTS of deploy/validate_manifests.py)")
    kserve_files = sorted(KSERVE_DIR.rglob("*.yaml"))
    kserve_docs = []
    for path in kserve_files:
        kserve_docs += load_documents(path.read_text(encoding="utf-8"), rel(path))
        checked.append(rel(path))
    problems += validate_documents(kserve_docs, versions)
    return problems, checked


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="manifest files to check (default: all of "
                                                 "Ferrum's)")
    parser.add_argument("-k", "--kubernetes-version", action="append", metavar="X.Y",
                        help="check against this version's schemas (repeatable; default: "
                             + ", ".join(KUBERNETES_VERSIONS) + ")")
    parser.add_argument("--write-manifests", action="store_true",
                        help="regenerate deploy/manifests/ from the chart and exit")
    args = parser.parse_args(argv)
    versions = tuple(args.kubernetes_version or KUBERNETES_VERSIONS)
    if args.write_manifests:
        for path in write_manifests():
            print(f"wrote {rel(path)}")
        return 0
    if args.files:
        problems, checked = [], []
        for name in args.files:
            path = Path(name)
            problems += validate_text(path.read_text(encoding="utf-8"), name, versions)
            checked.append(name)
    else:
        problems, checked = check_all(versions)
    for line in checked:
        print(f"checked {line}")
    if problems:
        print(f"\n{len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"all valid against Kubernetes {', '.join(versions)} schemas and deploy/schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
