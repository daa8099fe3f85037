"""The deployment files under deploy/: they parse, agree with each other and with the image.

No Docker engine or cluster is needed: the YAML is checked for structure, the Dockerfile is
read line by line, and the image's install steps are replayed in a fresh venv (slow, needs PyPI).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import venv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
CONFIGS = DEPLOY / "config"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"

YAML_FILES = sorted(p for ext in ("*.yaml", "*.yml") for p in DEPLOY.rglob(ext))
CONFIG_FILES = sorted(CONFIGS.glob("config.*.yaml"))
RULES_FILE = CONFIGS / "rules.yaml"
RULES_MOUNT = "/etc/alerter/rules.yaml"
CONFIG_MOUNT = "/etc/alerter/config.yaml"
RULES_REF = "rules.yaml"
"""How the configs name the rules: beside the config file, in the repository and in a container."""
SECRET_TEMPLATE = K8S / "secret.example.yaml"
PLACEHOLDER = "change-me"
SECRET_KEYS = {"LEAP_API_KEY", "SLACK_BOT_TOKEN", "SMTP_PASSWORD", "CRM_WEBHOOK_SECRET", "DATABASE_URL"}

# The config keys README documents (those the deploy files may use).
ALLOWED_CONFIG_KEYS: dict[str, set[str]] = {
    "": {"source", "poll", "state", "http", "rules", "log", "operations_receiver"},
    "source": {"base_url", "api_key", "page_size", "timeout", "filters", "max_retries"},
    "poll": {"interval", "overlap", "reconcile_interval", "initial_sync"},
    "state": {"url"},
    "http": {"listen"},
    "log": {"format", "level"},
}
BASE_URLS = {
    "config.production.yaml": "https://api.leap.energy",
    "config.staging.yaml": "https://api.staging.leap.energy",
    "config.compose.yaml": "http://sim:8099",
}
# Stand-ins for the loader tests; none of them is a real credential.
TEST_ENV = {
    "LEAP_API_KEY": "test-key",
    "DATABASE_URL": "postgresql://alerter:alerter@db.invalid:5432/alerter",
    "SLACK_BOT_TOKEN": "xoxb-test",
    "SMTP_PASSWORD": "test-password",
    "CRM_WEBHOOK_SECRET": "whsec_dGVzdC1vbmx5LXdlYmhvb2stc2VjcmV0LTMyYnl0ZXM=",
}
ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<default>:-[^}]*)?\}")
SECRETISH = re.compile(r"KEY|TOKEN|PASSWORD|SECRET", re.IGNORECASE)


def load_yaml(path: Path) -> list[Any]:
    """Every document of a (possibly multi-document) YAML file, skipping empty ones."""
    yaml = YAML(typ="safe", pure=True)
    return [doc for doc in yaml.load_all(path.read_text(encoding="utf-8")) if doc is not None]


def load_one(path: Path) -> Any:
    docs = load_yaml(path)
    assert len(docs) == 1, f"{path.name}: expected one YAML document, found {len(docs)}"
    return docs[0]


def manifests() -> dict[str, dict[str, Any]]:
    """The Kubernetes objects under deploy/k8s, by kind (one of each), kustomization aside."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_yaml(path):
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifests()["Deployment"]["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    first: dict[str, Any] = containers[0]
    return first


def strings(node: Any) -> Iterator[str]:
    """Every string value (not key, not comment) of a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def env_refs(path: Path) -> set[tuple[str, bool]]:
    """`(name, has_default)` of every `${VAR}` / `${VAR:-default}` in a YAML file's values."""
    return {
        (m["name"], m["default"] is not None)
        for doc in load_yaml(path)
        for value in strings(doc)
        for m in ENV_REF.finditer(value)
    }


def required_vars(path: Path) -> set[str]:
    return {name for name, has_default in env_refs(path) if not has_default}


# ---- every YAML file -------------------------------------------------------------------


def test_deploy_has_yaml_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {
        "docker-compose.yml",
        "config/config.production.yaml",
        "config/config.staging.yaml",
        "config/config.compose.yaml",
        "config/rules.yaml",
        "k8s/kustomization.yaml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path: Path) -> None:
    docs = load_yaml(path)
    assert docs, f"{path} has no YAML document"
    for doc in docs:
        assert isinstance(doc, dict)


# ---- Kubernetes ------------------------------------------------------------------------


def test_k8s_objects_are_namespace_agnostic() -> None:
    objects = manifests()
    assert set(objects) == {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"}
    for kind, obj in objects.items():
        assert "namespace" not in obj["metadata"], f"{kind} pins a namespace"


def test_deployment_replicas_and_probes() -> None:
    deployment = manifests()["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    c = container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/startedz"), ("startupProbe", "/startedz")):
        assert c[probe]["httpGet"]["port"] in ("http", 8080)
        # "This process serves" (and, to start and be ready, has migrated its store): /readyz turns
        # 503 whenever Leap is down or refuses the key, which would take every replica out of the
        # Service and, with the PDB, block node drains.
        assert c[probe]["httpGet"]["path"] == path, probe
    assert c["args"] == ["run", "-c", CONFIG_MOUNT]


def test_deployment_security() -> None:
    spec = pod_spec()
    c = container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["automountServiceAccountToken"] is False
    # A read-only root needs a writable /tmp.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_deployment_reads_the_configmap_and_secret() -> None:
    objects = manifests()
    spec = pod_spec()
    c = container()
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    config_volume = volumes[mounts["/etc/alerter"]["name"]]
    assert config_volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    assert mounts["/etc/alerter"]["readOnly"] is True
    assert set(objects["ConfigMap"]["data"]) == {"config.yaml", "rules.yaml"}
    assert c["envFrom"] == [{"secretRef": {"name": objects["Secret"]["metadata"]["name"]}}]


def test_configmap_matches_the_config_files() -> None:
    data = manifests()["ConfigMap"]["data"]
    assert data["config.yaml"] == (CONFIGS / "config.production.yaml").read_text(encoding="utf-8")
    assert data["rules.yaml"] == RULES_FILE.read_text(encoding="utf-8")


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_the_pods() -> None:
    objects = manifests()
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert _selects(objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"], pod_labels)
    assert _selects(objects["Service"]["spec"]["selector"], pod_labels)
    assert objects["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


def test_service_is_scraped() -> None:
    service = manifests()["Service"]
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080
    assert port["targetPort"] in ("http", 8080)


def test_secret_template_holds_only_placeholders() -> None:
    secret = load_one(SECRET_TEMPLATE)
    assert secret["kind"] == "Secret"
    assert "data" not in secret, "base64 `data` would hide what is in the template"
    assert set(secret["stringData"]) == SECRET_KEYS
    for key, value in secret["stringData"].items():
        assert value == PLACEHOLDER, f"{key} must be the placeholder {PLACEHOLDER!r}"


def test_kustomization_lists_existing_files() -> None:
    kustomization = load_one(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization lists missing {resource}"
    # Everything but the Secret template; applying that would overwrite the real Secret.
    expected = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRET_TEMPLATE.name}
    assert set(resources) == expected
    assert "namespace" not in kustomization


def test_kustomize_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    yaml = YAML(typ="safe", pure=True)
    kinds = sorted(doc["kind"] for doc in yaml.load_all(proc.stdout) if doc)
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]


# ---- docker compose --------------------------------------------------------------------


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_one(DEPLOY / "docker-compose.yml")
    return doc


def test_compose_services_and_healthchecks() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "sim", "alerter"}
    postgres, sim, alerter = services["postgres"], services["sim"], services["alerter"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["volumes"]
    assert sim["healthcheck"]["test"]
    assert sim["command"] == ["sim", "--host", "0.0.0.0", "--port", "8099", "--meters", "5000", "--churn", "0.2"]
    # alerter's own healthcheck is the image's HEALTHCHECK (see the Dockerfile tests).
    assert alerter["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "sim" in alerter["depends_on"]
    assert alerter["environment"]["DATABASE_URL"] == "postgresql://alerter:alerter@postgres:5432/alerter"
    assert "8080:8080" in alerter["ports"]


def test_compose_builds_the_image_from_the_repo_root() -> None:
    for name in ("sim", "alerter"):
        service = compose()["services"][name]
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert context == REPO
        assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert service["image"] == compose()["services"]["alerter"]["image"]


def test_compose_mounts_config_and_rules() -> None:
    alerter = compose()["services"]["alerter"]
    mounts: dict[str, Path] = {}
    for volume in alerter["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = (DEPLOY / source).resolve()
    assert mounts[CONFIG_MOUNT] == CONFIGS / "config.compose.yaml"
    assert mounts[RULES_MOUNT] == RULES_FILE
    assert Path(CONFIG_MOUNT).with_name(RULES_REF) == Path(RULES_MOUNT)  # what `rules: rules.yaml` names there
    assert all(path.is_file() for path in mounts.values())


# ---- config and rules files ------------------------------------------------------------


def _check_keys(doc: dict[str, Any], name: str) -> None:
    unknown = set(doc) - ALLOWED_CONFIG_KEYS[""]
    assert not unknown, f"{name}: unknown top-level keys {unknown}"
    for section, allowed in ALLOWED_CONFIG_KEYS.items():
        if section and section in doc:
            extra = set(doc[section]) - allowed
            assert not extra, f"{name}: unknown keys in {section}: {extra}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_file_shape(path: Path) -> None:
    doc = load_one(path)
    _check_keys(doc, path.name)
    assert doc["source"]["base_url"] == BASE_URLS[path.name]
    assert doc["source"]["api_key"].startswith("${LEAP_API_KEY")
    assert doc["state"]["url"] == "${DATABASE_URL}"
    assert doc["http"]["listen"] == "0.0.0.0:8080"  # the image's HEALTHCHECK and EXPOSE
    assert doc["rules"] == RULES_REF  # beside the config: deploy/config/ here, /etc/alerter/ in a container
    assert (path.parent / RULES_REF).resolve() == RULES_FILE
    assert doc["log"]["format"] == "json"
    receivers = {r["name"] for r in load_one(RULES_FILE)["receivers"]}
    assert doc.get("operations_receiver") in receivers


def test_config_files_cover_each_environment() -> None:
    assert {p.name for p in CONFIG_FILES} == set(BASE_URLS)


def test_rules_file_shape() -> None:
    doc = load_one(RULES_FILE)
    assert set(doc) == {"receivers", "defaults", "rules"}
    receivers = {r["name"]: r for r in doc["receivers"]}
    assert len(receivers) == len(doc["receivers"]), "duplicate receiver names"
    kinds = {name: (set(r) - {"name"}) for name, r in receivers.items()}
    assert all(len(k) == 1 for k in kinds.values()), kinds
    assert {k for ks in kinds.values() for k in ks} == {"slack", "email", "webhook", "console"}
    assert receivers["console"]["console"] == {}
    names = [rule["name"] for rule in doc["rules"]]
    assert len(names) == len(set(names)), "duplicate rule names"
    for rule in doc["rules"]:
        assert rule["receivers"], rule["name"]
        assert set(rule["receivers"]) <= set(receivers), f"{rule['name']} names an unknown receiver"


def test_secrets_come_from_the_environment() -> None:
    for name, has_default in env_refs(RULES_FILE):
        assert not has_default, f"rules.yaml: ${{{name}}} should not have a default"
    rules = load_one(RULES_FILE)
    by_kind = {next(iter(set(r) - {"name"})): r for r in rules["receivers"]}
    assert by_kind["slack"]["slack"]["token"] == "${SLACK_BOT_TOKEN}"
    assert by_kind["email"]["email"]["smtp"]["password"] == "${SMTP_PASSWORD}"
    assert by_kind["webhook"]["webhook"]["secret"] == "${CRM_WEBHOOK_SECRET}"


def test_every_required_variable_is_provided() -> None:
    """Each `${VAR}` without a default is in the k8s Secret and in the compose environment."""
    rules_vars = required_vars(RULES_FILE)
    assert rules_vars == {"SLACK_BOT_TOKEN", "SMTP_PASSWORD", "CRM_WEBHOOK_SECRET"}
    secret_keys = set(load_one(SECRET_TEMPLATE)["stringData"])
    for name in ("config.production.yaml", "config.staging.yaml"):
        assert required_vars(CONFIGS / name) | rules_vars <= secret_keys, name
    compose_env = set(compose()["services"]["alerter"]["environment"])
    assert required_vars(CONFIGS / "config.compose.yaml") | rules_vars <= compose_env


def _load_config_function() -> Callable[..., Any]:
    import alerter.config

    load_config = getattr(alerter.config, "load_config", None)
    if load_config is None:
        pytest.skip("alerter.config.load_config is not available yet")
    assert callable(load_config)
    return load_config  # type: ignore[no-any-return]


@pytest.fixture
def deploy_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(TEST_ENV)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_loads_with_the_project_loader(path: Path, deploy_env: dict[str, str]) -> None:
    load_config = _load_config_function()
    config = load_config(path)
    assert config.source.base_url == BASE_URLS[path.name]
    assert config.source.api_key.get_secret_value() == deploy_env["LEAP_API_KEY"]
    assert config.state.url == deploy_env["DATABASE_URL"]
    assert config.http.listen == "0.0.0.0:8080"


def test_rules_load_with_the_project_loader(deploy_env: dict[str, str]) -> None:
    try:  # imported by name: the module may not exist yet when this file is type-checked
        rules_module = importlib.import_module("alerter.rulefile")
    except ImportError as err:
        pytest.skip(f"alerter.rulefile is not available yet: {err}")
    load_rules = getattr(rules_module, "load_rules", None)
    if load_rules is None:
        pytest.skip("alerter.rulefile.load_rules is not available yet")
    ruleset = load_rules(RULES_FILE)
    assert ruleset is not None


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_alerter_check_accepts_the_deploy_files(path: Path, deploy_env: dict[str, str]) -> None:
    """`alerter check` validates the config and the rules and renders every template."""
    proc = subprocess.run(
        [sys.executable, "-m", "alerter", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **deploy_env},
    )
    not_written = ("not available yet", "cannot import name", "No module named 'alerter.")
    if proc.returncode != 0 and any(marker in proc.stderr for marker in not_written):
        pytest.skip(f"`alerter check` is not written yet: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_check_command_of_the_deploy_readme_works_as_written() -> None:
    """The `alerter check` block of deploy/README.md, pasted into a shell at the repository root."""
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    block = text[text.index("Check the files") :].split("```sh\n", 1)[1].split("```", 1)[0]
    assert "alerter check" in block and "..." not in block
    bin_dir = str(Path(sys.executable).parent)  # where `alerter` is installed beside this Python
    env = {k: v for k, v in os.environ.items() if k not in SECRET_KEYS} | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", "-c", block], cwd=REPO, capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def test_the_probed_path_stays_200_while_leap_is_unreachable(tmp_path: Path) -> None:
    """What the probes ask serves while the pipeline is unhealthy; /readyz says so, for monitoring."""
    from tests.support.proc import Service
    from tests.support.service import config_yaml, rules_yaml, write_config

    probed = {container()[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe")}
    cfg = write_config(
        tmp_path,
        config_yaml("http://127.0.0.1:9", f"sqlite:///{tmp_path}/s.db", log_format="json", interval="1s"),
        rules_yaml("http://127.0.0.1:9/hook"),
    )
    svc = await Service.start(str(cfg))
    try:
        await svc.wait_for_log("cycle_failed", 60)
        status, body = await svc.get("/readyz")
        assert status == 503 and "reason" in body
        for path in probed:
            assert (await svc.get(path))[0] == 200, path
    finally:
        await svc.stop()


# ---- Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """`(INSTRUCTION, arguments)` pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends in a continuation"
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def test_dockerfile_is_multi_stage() -> None:
    stages = _stages()
    assert len(stages) >= 2
    base = {
        args.split("=", 1)[1]
        for kw, args in dockerfile_instructions()
        if kw == "ARG" and args.startswith("PYTHON_IMAGE=")
    }
    assert base == {"python:3.11-slim"}
    builder, runtime = stages[0], stages[-1]
    assert _args(builder, "FROM")[0].endswith(" AS builder")
    assert any("pip install -c constraints.txt ." in run for run in _args(builder, "RUN"))
    assert any("python -m venv /opt/venv" in run for run in _args(builder, "RUN"))
    assert any(copy.startswith("--from=builder /opt/venv /opt/venv") for copy in _args(runtime, "COPY"))


def test_dockerfile_runtime_stage() -> None:
    runtime = _stages()[-1]
    users = _args(runtime, "USER")
    assert users, "the runtime stage must drop root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any("--uid 10001" in run and "alerter" in run for run in _args(runtime, "RUN"))
    assert _args(runtime, "WORKDIR")[-1] == "/var/lib/alerter"
    assert "8080" in _args(runtime, "EXPOSE")
    assert _args(runtime, "STOPSIGNAL") == ["SIGTERM"]
    assert json.loads(_args(runtime, "ENTRYPOINT")[-1]) == ["alerter"]
    assert json.loads(_args(runtime, "CMD")[-1]) == ["run", "-c", CONFIG_MOUNT]
    env = " ".join(_args(runtime, "ENV"))
    assert "PYTHONUNBUFFERED=1" in env
    assert "/opt/venv/bin" in env


def test_dockerfile_healthcheck() -> None:
    (healthcheck,) = _args(_stages()[-1], "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])  # exec form: no shell needed
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<HEALTHCHECK>", "exec")
    assert "http://127.0.0.1:8080/healthz" in healthcheck
    assert "urllib.request" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck


def test_dockerfile_bakes_in_no_secret() -> None:
    for keyword, args in dockerfile_instructions():
        if keyword not in ("ENV", "ARG"):
            continue
        for token in shlex.split(args):
            name = token.split("=", 1)[0]
            assert not SECRETISH.search(name), f"{keyword} {name}: secrets come at run time"
    assert not re.search(r"xox[abp]-|whsec_", DOCKERFILE.read_text(encoding="utf-8"))


def test_dockerfile_copies_only_what_exists() -> None:
    for keyword, args in dockerfile_instructions():
        if keyword != "COPY" or args.startswith("--from="):
            continue
        *sources, _target = args.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignored(source), f"COPY {source}: excluded by {DOCKERIGNORE.name}"


# ---- Dockerfile.dockerignore -----------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's ignore-pattern syntax (filepath.Match plus `**`) as a regex over a clean path."""
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, _pattern_regex(line.lstrip("!"))))
    return patterns


def dockerignored(path: str) -> bool:
    """Whether `path` (relative to the build context) is left out; the last matching line wins,
    and a line matches a path when it matches the path or one of its parent directories."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in _ignore_patterns():
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "alerter.db",
        "state/alerter.db-wal",
        "alerter/__pycache__/cli.cpython-311.pyc",
        "alerter.egg-info/PKG-INFO",
        "tests/test_deploy.py",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/x.json",
        "deploy/k8s/secret.example.yaml",
    ],
)
def test_dockerignore_excludes(path: str) -> None:
    assert dockerignored(path)


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "constraints.txt", "README.md", "alerter/cli.py", "alerter/py.typed"]
)
def test_dockerignore_keeps_the_sources(path: str) -> None:
    assert not dockerignored(path)


def test_dockerignore_keeps_package_data() -> None:
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ]["alerter"]
    for pattern in package_data:
        for path in (REPO / "alerter").glob(pattern):
            if path.is_file():
                assert not dockerignored(path.relative_to(REPO).as_posix())


# ---- the image's install steps, replayed -----------------------------------------------


def _build_context(dest: Path) -> Path:
    """The files of the Docker build context that the builder stage copies."""
    dest.mkdir()
    for name in ("pyproject.toml", "constraints.txt", "README.md"):
        shutil.copyfile(REPO / name, dest / name)
    for path in sorted((REPO / "alerter").rglob("*")):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and not dockerignored(rel):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / rel)
    return dest


def _pip_env() -> dict[str, str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("VIRTUAL_ENV", None)
    return env


def _require_index(venv_dir: Path, package: str) -> None:
    """Skip, rather than fail, when no package index answers (an offline machine)."""
    proc = subprocess.run(
        [str(venv_dir / "bin" / "python"), "-m", "pip", "index", "versions", package],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_pip_env(),
    )
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines() or ["no output"]
        pytest.skip(f"pip cannot reach a package index to look up {package}: {lines[-1]}")


def _pip_install(venv_dir: Path, *args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [str(venv_dir / "bin" / "python"), "-m", "pip", "install", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
        env=_pip_env(),
    )
    assert proc.returncode == 0, f"pip install {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_image_install_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    """The builder stage: dependencies from pyproject under the constraints, then the package."""
    context = _build_context(tmp_path / "src")
    venv_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    project = tomllib.loads((context / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(project["dependencies"]) + "\n", encoding="utf-8")
    _require_index(venv_dir, re.split(r"[^A-Za-z0-9_.-]", project["dependencies"][0])[0])
    _pip_install(venv_dir, "-c", "constraints.txt", "-r", str(requirements), cwd=context)
    _pip_install(venv_dir, "-c", "constraints.txt", ".", cwd=context)
    outputs = {}
    for argv in (["--help"], ["sim", "--help"], ["run", "--help"]):
        proc = subprocess.run(
            [str(venv_dir / "bin" / "alerter"), *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        outputs[argv[0]] = proc.stdout
    assert "run" in outputs["--help"] and "sim" in outputs["--help"]
    assert "--config" in outputs["run"]
