"""Checks of the deployment files: systemd unit, Prometheus, Grafana, container, compose, k8s.

Fast and offline: parse every file, check the unit's keys, check that the dashboard and the alert
rules use only documented metrics and labels, keep the drain grace and ports consistent across
deployments, and run `promtool` and `systemd-analyze` when they are on PATH (skipped with a reason
otherwise). One test has a real Prometheus scrape a real daemon, when both are installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from bswd.config import Batching, ConfigError, Curve, DaemonConfig, Limits, WatchFolder, load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "bswd.service"
DROPIN = SYSTEMD / "bswd.service.d" / "watch-folders.conf.example"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
PROM_CONFIGS = [DEPLOY / "prometheus" / "prometheus.yml", DEPLOY / "prometheus" / "prometheus-compose.yml"]
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bswd.json"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
K8S_BASE = DEPLOY / "k8s" / "base"
K8S_GPU = DEPLOY / "k8s" / "gpu"
PROMETHEUS_RULE = DEPLOY / "k8s" / "monitoring" / "prometheusrule.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

METRICS_PORT = 9464
DRAIN_TIMEOUT_S = 120  # unit TimeoutStopSec, compose stop_grace_period, k8s terminationGracePeriodSeconds


@dataclass(frozen=True)
class Family:
    """One metric family as docs/metrics.md documents it."""

    kind: str  # counter | gauge | histogram
    labels: dict[str, frozenset[str]]  # label -> documented values (empty: any value)
    samples: frozenset[str]  # exported sample names, suffixes included


def read_metrics_doc(path: Path = METRICS_DOC) -> dict[str, Family]:
    """The family table of docs/metrics.md (the daemon's list of what it exports): rows of
    | `family` | type | labels | exported samples | meaning |, labels as `name` (v1, v2, ...)."""
    families: dict[str, Family] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"`bswd_[a-z0-9_]+`", cells[0]):
            continue
        labels = {}
        for name, values in re.findall(r"`([a-z_]+)`(?:\s*\(([^)]*)\))?", cells[2]):
            listed = {v.strip() for v in values.split(",") if v.strip()}
            open_ended = any("…" in v or "..." in v for v in listed)
            labels[name] = frozenset() if open_ended else frozenset(listed)
        families[cells[0].strip("`")] = Family(
            cells[1], labels, frozenset(re.findall(r"`(bswd_[a-z0-9_]+)`", cells[3])))
    return families


METRICS = read_metrics_doc()
SAMPLE_FAMILY = {sample: name for name, fam in METRICS.items() for sample in fam.samples}
# Labels Prometheus or our scrape configs attach to every series, plus the histogram bucket label.
TARGET_LABELS = {"instance", "job", "service", "le"}

DRAIN_MARGIN_S = 10  # the daemon's drain_grace_s must leave at least this much of the timeout


def config_keys() -> dict[str, set[str]]:
    """The keys the daemon's loader accepts: "" for top-level keys, else the table's name."""
    tables = {f.name: f for f in dataclasses.fields(DaemonConfig) if f.name in
              {"batching", "limits", "curve", "watch"}}
    keys = {"": {f.name for f in dataclasses.fields(DaemonConfig)} - set(tables)}
    for name, cls in [("batching", Batching), ("limits", Limits), ("curve", Curve), ("watch", WatchFolder)]:
        keys[name] = {f.name for f in dataclasses.fields(cls)}
    return keys


# ---- helpers ------------------------------------------------------------------------------------

def load_yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_yaml(path: Path) -> Any:
    docs = load_yaml_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, got {len(docs)}"
    return docs[0]


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd unit syntax: [Section] headers, Key=Value lines (keys may repeat), # and ; comments,
    backslash continuation lines."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=Value line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def unit_value(section: list[tuple[str, str]], key: str) -> str:
    values = unit_values(section, key)
    assert values, f"{key}= is not set"
    return values[-1]


def seconds(value: str) -> float:
    """A systemd time span or a compose duration (120, 120s, 2min, 2m, 1min 30s) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", str(value)):
        total += float(number) * units[unit]
    return total


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bbswd_[a-z0-9_]+", expr))


def matchers(expr: str) -> Iterator[tuple[str, str, str, str]]:
    """(metric, label, operator, value) for every label matcher in a selector."""
    for metric, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\{([^{}]*)\}", expr):
        for label, op, value in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            yield metric, label, op, value


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in group.split(",") if x.strip())
    return labels


def alert_exprs() -> dict[str, str]:
    rules = load_yaml(ALERTS)
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_exprs() -> dict[str, str]:
    """panel title/refId -> PromQL, plus the template variable queries."""
    out: dict[str, str] = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']}/{target['refId']}"] = target["expr"]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            out[f"${var['name']}"] = var["definition"]
    return out


def promql_for_promtool(expr: str) -> str:
    """Grafana's variables replaced by values PromQL can parse."""
    for var in re.findall(r"label_values\(([^)]*)\)", expr):
        metric = var.split(",")[0].strip()
        expr = expr.replace(f"label_values({var})", metric)
    return expr.replace("$__rate_interval", "5m").replace("$instance", ".*")


def k8s_objects(directory: Path) -> list[dict[str, Any]]:
    kustomization = load_yaml(directory / "kustomization.yaml")
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = directory / resource
        if path.is_file():
            objects.extend(load_yaml_docs(path))
    return objects


def k8s_find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def check_config(text: str, tmp_path: Path, where: str) -> DaemonConfig:
    """Load a shipped bswd.toml with the daemon's own loader (no BSWD_* environment)."""
    path = tmp_path / f"{where.replace(' ', '_')}.toml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path, env={})
    except ConfigError as exc:
        pytest.fail(f"{where}: the daemon rejects it: {exc}")
    assert cfg.metrics.rsplit(":", 1)[1] == str(METRICS_PORT), where
    assert cfg.drain_grace_s + DRAIN_MARGIN_S <= DRAIN_TIMEOUT_S, where
    return cfg


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, **kwargs)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not on PATH (Debian: apt-get install "
                    f"{'prometheus' if tool.startswith('prom') else tool})")
    return path


# ---- every file parses ----------------------------------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    assert load_yaml_docs(path), f"{path} is empty"


def test_expected_files_exist() -> None:
    for path in [UNIT, DROPIN, SYSTEMD / "bswd.sysusers", SYSTEMD / "bswd.toml.example", ALERTS,
                 ALERTS_TEST, *PROM_CONFIGS, DASHBOARD, COMPOSE, COMPOSE_GPU, CONTAINERFILE,
                 DEPLOY / "container" / "bswd.toml", K8S_BASE / "kustomization.yaml",
                 K8S_GPU / "kustomization.yaml", PROMETHEUS_RULE, DEPLOY_DOC]:
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"


def test_dashboard_is_json() -> None:
    assert dashboard()["uid"] == "bswd-overview"


# ---- systemd --------------------------------------------------------------------------------------

def test_unit_required_keys() -> None:
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    svc = unit["Service"]
    assert unit_value(svc, "Type") == "notify"
    assert unit_value(svc, "NotifyAccess") == "main"
    assert seconds(unit_value(svc, "WatchdogSec")) > 0
    assert unit_value(svc, "Restart") == "on-failure"
    assert unit_value(svc, "ExecStart").endswith("bswd serve --config /etc/bswd/bswd.toml")
    assert "-HUP" in unit_value(svc, "ExecReload")
    assert unit_value(svc, "KillSignal") == "SIGTERM"
    assert seconds(unit_value(svc, "TimeoutStopSec")) == DRAIN_TIMEOUT_S
    assert unit_value(svc, "User") == "bswd"
    assert unit_value(svc, "StateDirectory") == "bswd"
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
                       "RestrictNamespaces": "yes", "LockPersonality": "yes",
                       "DevicePolicy": "closed"}.items():
        assert unit_value(svc, key) == value, f"{key}="
    assert unit_value(svc, "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "@system-service" in unit_values(svc, "SystemCallFilter")
    devices = {v.split()[0] for v in unit_values(svc, "DeviceAllow")}
    assert {"char-nvidia-frontend", "char-nvidia-uvm"} <= devices
    assert set(unit_value(svc, "SupplementaryGroups").split()) == {"video", "render"}
    # Settings that would break PyTorch or CUDA must stay off (see the comments in the unit).
    assert unit_values(svc, "MemoryDenyWriteExecute") in ([], ["no"])
    assert unit_values(svc, "PrivateDevices") in ([], ["no"])
    assert unit_values(svc, "ProcSubset") in ([], ["all"])
    assert unit_values(svc, "PrivateUsers") in ([], ["no"])
    assert unit_value(unit["Install"], "WantedBy") == "multi-user.target"


def test_sysusers_creates_the_unit_user() -> None:
    lines = [ln.split() for ln in (SYSTEMD / "bswd.sysusers").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert [ln[:2] for ln in lines] == [["u", "bswd"]]
    unit = parse_unit(UNIT.read_text(encoding="utf-8"))
    assert unit_value(unit["Service"], "User") == lines[0][1]


def test_dropin_only_touches_paths() -> None:
    dropin = parse_unit(DROPIN.read_text(encoding="utf-8"))
    assert set(dropin) == {"Service"}
    assert {k for k, _ in dropin["Service"]} <= {"ReadWritePaths", "ProtectHome", "BindPaths"}


@pytest.mark.parametrize("with_dropin", [False, True], ids=["unit", "unit+dropin"])
def test_systemd_analyze_verify(tmp_path: Path, with_dropin: bool) -> None:
    analyze = need("systemd-analyze")
    # verify insists that ExecStart's binary exists: point it at a stub, leave the rest as shipped.
    stub = tmp_path / "bin" / "bswd"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/opt/bswd/bin/bswd " in text
    (units / "bswd.service").write_text(text.replace("/opt/bswd/bin/bswd", str(stub)))
    if with_dropin:
        (units / "bswd.service.d").mkdir()
        shutil.copy(DROPIN, units / "bswd.service.d" / "watch-folders.conf")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:", "SYSTEMD_LOG_LEVEL": "notice"}
    proc = run([analyze, "verify", "--man=no", "bswd.service"], env=env, cwd=units)
    # Unknown keys and bad values are only warnings (exit 0), so the output must be empty too.
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


# ---- configuration files --------------------------------------------------------------------------

def k8s_config_toml() -> dict[str, Any]:
    cm = k8s_find(k8s_objects(K8S_BASE), "ConfigMap", "bswd-config")
    return dict(tomllib.loads(cm["data"]["bswd.toml"]))


def test_shipped_configs_load(tmp_path: Path) -> None:
    example = check_config((SYSTEMD / "bswd.toml.example").read_text(), tmp_path, "bswd.toml.example")
    assert example.state_dir == Path("/var/lib/bswd")  # the unit's StateDirectory=
    container = check_config((DEPLOY / "container" / "bswd.toml").read_text(), tmp_path, "container")
    assert [(str(w.input), str(w.output)) for w in container.watch] == [("/data/in", "/data/out")]
    cm = k8s_find(k8s_objects(K8S_BASE), "ConfigMap", "bswd-config")
    k8s = check_config(cm["data"]["bswd.toml"], tmp_path, "k8s ConfigMap")
    assert not k8s.watch, "k8s replicas get their inbox from --watch (one per pod), not the ConfigMap"


def test_example_config_sets_every_key() -> None:
    raw = tomllib.loads((SYSTEMD / "bswd.toml.example").read_text())
    keys = config_keys()
    tables = set(keys) - {""}
    assert set(raw) - tables == keys[""], "top-level keys of bswd.toml.example"
    for name in tables - {"watch"}:
        assert set(raw[name]) == keys[name], f"[{name}] in bswd.toml.example"
    assert set().union(*(set(w) for w in raw["watch"])) == keys["watch"], "[[watch]] keys"


def test_dropin_covers_example_watch_folders() -> None:
    dropin = parse_unit(DROPIN.read_text(encoding="utf-8"))
    writable = [p.lstrip("-") for v in unit_values(dropin["Service"], "ReadWritePaths") for p in v.split()]
    cfg = tomllib.loads((SYSTEMD / "bswd.toml.example").read_text())
    for w in cfg["watch"]:
        needed = [w["output"], w.get("moved_to", "")]
        if w["policy"] != "keep":
            needed.append(w["input"])
        for folder in filter(None, needed):
            assert any(folder == p or folder.startswith(p + "/") for p in writable), folder


def test_deploy_doc_lists_every_config_key() -> None:
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    for section, keys in config_keys().items():
        for key in keys:
            assert f"`{key}`" in doc, f"docs/deploy.md does not list {section or 'top-level'} key {key}"


# ---- metrics used by the dashboard and the alert rules ---------------------------------------------

def test_metrics_doc_is_readable() -> None:
    # What issue 5 asked the daemon to export; the doc is where the daemon lists it.
    agreed = {"bswd_jobs_completed", "bswd_input_bytes", "bswd_output_bytes", "bswd_pixels",
              "bswd_patches", "bswd_verify_failures", "bswd_queue_depth", "bswd_jobs_in_flight",
              "bswd_step_lanes", "bswd_batch_fill_ratio", "bswd_queue_wait_seconds",
              "bswd_step_seconds", "bswd_job_seconds", "bswd_bits_per_dim",
              "bswd_device_busy_seconds", "bswd_model_info", "bswd_build_info", "bswd_ready"}
    assert agreed <= set(METRICS), f"docs/metrics.md lacks {agreed - set(METRICS)}"
    assert METRICS["bswd_jobs_completed"].labels["result"] == {"ok", "failed", "rejected", "skipped",
                                                                "cancelled"}
    assert "bswd_job_seconds_bucket" in METRICS["bswd_job_seconds"].samples


def all_exprs() -> dict[str, str]:
    return {**{f"alert {k}": v for k, v in alert_exprs().items()},
            **{f"dashboard {k}": v for k, v in dashboard_exprs().items()}}


def test_every_used_metric_is_documented() -> None:
    used: set[str] = set()
    for where, expr in all_exprs().items():
        for name in metric_names(expr):
            # Exact sample names: a histogram used without _bucket/_sum/_count fails here too.
            assert name in SAMPLE_FAMILY, f"{where}: {name} is not exported (docs/metrics.md)"
            used.add(SAMPLE_FAMILY[name])
    # The dashboard shows every family (the info gauges in the model/build tables).
    unused = set(METRICS) - used
    assert not unused, f"documented but shown nowhere: {unused}"


def test_every_used_label_is_documented() -> None:
    for where, expr in all_exprs().items():
        labels: dict[str, frozenset[str]] = {label: frozenset() for label in TARGET_LABELS}
        for name in metric_names(expr):
            labels.update(METRICS[SAMPLE_FAMILY[name]].labels)
        for metric, label, op, value in matchers(expr):
            assert label in labels, f"{where}: label {label} on {metric or 'a selector'}"
            if labels[label] and op in {"=", "!="}:
                assert value in labels[label], f"{where}: {label}={value!r} is not a documented value"
        for label in grouping_labels(expr):
            assert label in labels, f"{where}: grouping by unknown label {label}"


def test_alert_rules_cover_the_issue() -> None:
    exprs = alert_exprs()
    assert "up" in exprs["BswdDown"]
    assert "bswd_queue_depth" in exprs["BswdQueueBackingUp"]
    assert 'result="failed"' in exprs["BswdJobFailures"]
    assert "bswd_verify_failures_total" in exprs["BswdVerifyFailure"]
    assert "bswd_ready" in exprs["BswdNotReady"]
    for rule in (r for g in load_yaml(ALERTS)["groups"] for r in g["rules"]):
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert {"summary", "description"} <= rule["annotations"].keys()


def test_prometheus_rule_matches_alerts() -> None:
    rule = load_yaml(PROMETHEUS_RULE)
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"], (
        "deploy/k8s/monitoring/prometheusrule.yaml must carry the rules of alerts.yml unchanged")


# ---- Grafana --------------------------------------------------------------------------------------

def test_dashboard_layout_and_datasource() -> None:
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert 'instance=~"$instance"' in target["expr"], f"{panel['title']}: ignores $instance"


def test_dashboard_shows_what_the_issue_asks() -> None:
    text = json.dumps(dashboard())
    for needle in ["rate(bswd_jobs_completed_total", "rate(bswd_input_bytes_total", "bswd_bits_per_dim",
                   "histogram_quantile(0.5, sum by (le) (rate(bswd_job_seconds_bucket",
                   "histogram_quantile(0.95, sum by (le) (rate(bswd_job_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(bswd_job_seconds_bucket",
                   "bswd_batch_fill_ratio", "bswd_step_lanes", "bswd_queue_depth",
                   "bswd_queue_wait_seconds", "bswd_device_busy_seconds_total",
                   "bswd_verify_failures_total", "bswd_model_info"]:
        assert needle in text, needle


def test_grafana_provisioning_matches_compose() -> None:
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "bswd.yaml")
    path = provider["providers"][0]["options"]["path"]
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    assert f"./grafana/dashboards:{path}:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{path}/bswd.json"
    ds = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "bswd-prometheus.yaml")
    assert ds["datasources"][0]["type"] == "prometheus"
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


# ---- promtool -------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", PROM_CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(config: Path) -> None:
    proc = run([need("promtool"), "check", "config", str(config)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_rules() -> None:
    proc = run([need("promtool"), "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_alert_unit_tests() -> None:
    proc = run([need("promtool"), "test", "rules", ALERTS_TEST.name], cwd=ALERTS_TEST.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_parses_dashboard_queries(tmp_path: Path) -> None:
    """Each panel query, as a recording rule, goes through Prometheus's own PromQL parser."""
    promtool = need("promtool")
    rules = [{"record": f"dashboard:q{i}", "expr": promql_for_promtool(expr)}
             for i, expr in enumerate(dashboard_exprs().values())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scrape_configs_point_at_the_metrics_port() -> None:
    for config in PROM_CONFIGS:
        jobs = {j["job_name"]: j for j in load_yaml(config)["scrape_configs"]}
        targets = [t for sc in jobs["bswd"]["static_configs"] for t in sc["targets"]]
        assert targets and all(t.endswith(f":{METRICS_PORT}") for t in targets), config.name
        assert load_yaml(config)["rule_files"] == ["alerts.yml"]


# ---- container, compose, Kubernetes -----------------------------------------------------------------

def containerfile_instructions() -> list[tuple[str, str]]:
    text = CONTAINERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_containerfile() -> None:
    known = {"FROM", "ARG", "ENV", "RUN", "COPY", "USER", "WORKDIR", "VOLUME", "EXPOSE",
             "HEALTHCHECK", "STOPSIGNAL", "ENTRYPOINT", "CMD", "LABEL"}
    instructions = containerfile_instructions()
    assert {w for w, _ in instructions} <= known
    for word, rest in instructions:
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert list(ROOT.glob(src)), f"COPY source {src} does not exist"
    last = {w: r for w, r in instructions}  # the final stage's values win
    assert last["USER"].split(":")[0] not in {"0", "root"}
    assert json.loads(last["ENTRYPOINT"]) == ["bswd"]
    assert json.loads(last["CMD"]) == ["serve", "--config", "/etc/bswd/bswd.toml"]
    assert "/healthz" in last["HEALTHCHECK"]
    assert str(METRICS_PORT) in last["EXPOSE"].split()
    args = {r.split("=")[0]: r.split("=", 1)[1] for w, r in instructions if w == "ARG" and "=" in r}
    assert args["TORCH_VERSION"].count(".") == 2


def test_compose() -> None:
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert set(services) == {"bswd", "prometheus", "grafana"}
    bswd = services["bswd"]
    assert (DEPLOY / bswd["build"]["context"] / bswd["build"]["dockerfile"]).resolve() == CONTAINERFILE
    assert seconds(bswd["stop_grace_period"]) == DRAIN_TIMEOUT_S
    assert "/healthz" in " ".join(bswd["healthcheck"]["test"])
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port} is published beyond loopback"
        for volume in service.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("./") and "${" not in src and not src.startswith("./data"):
                assert (DEPLOY / src).exists(), f"compose mounts missing {src}"
    gpu = load_yaml(COMPOSE_GPU)["services"]["bswd"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return k8s_find(objects, "StatefulSet", "bswd")["spec"]["template"]["spec"]


def test_k8s_base() -> None:
    objects = k8s_objects(K8S_BASE)
    sts = k8s_find(objects, "StatefulSet", "bswd")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    spec = pod_spec(objects)
    assert spec["terminationGracePeriodSeconds"] == DRAIN_TIMEOUT_S
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    # One inbox per replica on the shared volume, polled (network filesystems send no events).
    assert container["args"] == ["serve", "--config", "/etc/bswd/bswd.toml",
                                 "--watch", "/data/in/$(POD_NAME):/data/out", "--poll"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == METRICS_PORT
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    cfg = k8s_config_toml()
    assert mounts["state"] == cfg["state_dir"]
    assert mounts["shared"] == "/data"
    volumes = {v["name"]: v for v in spec["volumes"]}
    shared_claim = volumes["shared"]["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in k8s_find(objects, "PersistentVolumeClaim", shared_claim)["spec"]["accessModes"]
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["state"]
    for kind, name in [("Service", "bswd"), ("Service", "bswd-headless")]:
        svc = k8s_find(objects, kind, name)
        assert svc["spec"]["selector"].items() <= pod_labels.items()
    pdb = k8s_find(objects, "PodDisruptionBudget", "bswd")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)


def test_k8s_gpu_patch_requests_gpus() -> None:
    patch = load_yaml(K8S_GPU / "gpu-patch.yaml")
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (base,) = pod_spec(k8s_objects(K8S_BASE))["containers"]
    assert container["args"] == [*base["args"], "--device", "cuda"], "the patch replaces args whole"


def test_k8s_service_monitor_selects_only_the_metrics_service() -> None:
    monitor = load_yaml(DEPLOY / "k8s" / "monitoring" / "servicemonitor.yaml")
    selector = monitor["spec"]["selector"]["matchLabels"]
    objects = k8s_objects(K8S_BASE)
    services = [o for o in objects if o["kind"] == "Service"]
    chosen = [s["metadata"]["name"] for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert chosen == ["bswd"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.parametrize("overlay", [K8S_BASE, K8S_GPU], ids=["base", "gpu"])
def test_kustomize_builds(overlay: Path) -> None:
    proc = run([need("kubectl"), "kustomize", str(overlay)])
    assert proc.returncode == 0, proc.stderr
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert all(o["metadata"].get("namespace") == "bswd" for o in objects if o["kind"] != "Namespace")
    (container,) = pod_spec(objects)["containers"]
    if overlay == K8S_GPU:
        assert container["image"].endswith(":cuda")
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # kept by the patch
    else:
        assert container["image"].endswith(":cpu")


def test_deploy_doc_mentions_every_file() -> None:
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    for path in [UNIT, DROPIN, SYSTEMD / "bswd.sysusers", SYSTEMD / "bswd.toml.example", ALERTS,
                 *PROM_CONFIGS, DASHBOARD, COMPOSE, COMPOSE_GPU, CONTAINERFILE, PROMETHEUS_RULE]:
        assert str(path.relative_to(ROOT)) in doc, f"docs/deploy.md does not mention {path.name}"


# ---- a real Prometheus scraping a real daemon -------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def wait_for(what: str, check: Any, timeout: float, procs: dict[subprocess.Popen[bytes], Path]) -> Any:
    """Poll ``check`` until it returns something true; fail early if a process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, log in procs.items():
            assert proc.poll() is None, (f"{log.stem} exited with {proc.returncode} "
                                         f"while waiting for {what}:\n{log_tail(log)}")
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    logs = "\n".join(log_tail(log) for log in procs.values())
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{logs}")


def bswd_command() -> list[str]:
    exe = Path(sys.executable).with_name("bswd")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from bswd.cli import app; app()"]


def write_tiny_model(path: Path) -> None:
    """A small random integer model: real coding, fast on a CPU, no bundled weights needed."""
    torch = pytest.importorskip("torch")
    from bswd.model.config import ModelConfig
    from bswd.model.net import BitSwapVAE
    from bswd.model.quant import export_model

    torch.manual_seed(0)
    net = BitSwapVAE(ModelConfig(n_layers=2, width=16, upsample_width=8, latent_channels=4))
    net.set_quant(True)
    path.write_bytes(export_model(net, "deploy-test").to_bytes())


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_prometheus_scrapes_real_daemon(tmp_path: Path) -> None:
    prometheus = need("prometheus")
    bswd = bswd_command()
    metrics_port, zmq_port, prom_port = free_port(), free_port(), free_port()
    inbox, outbox, state = tmp_path / "in", tmp_path / "out", tmp_path / "state"
    for d in (inbox, outbox, state):
        d.mkdir()
    model = tmp_path / "tiny.bswm"
    write_tiny_model(model)
    logs, prom_logs = tmp_path / "bswd.log", tmp_path / "prometheus.log"
    daemon = subprocess.Popen(
        [*bswd, "serve", "--endpoint", f"tcp://127.0.0.1:{zmq_port}",
         "--metrics", f"127.0.0.1:{metrics_port}", "--state", str(state),
         "--watch", f"{inbox}:{outbox}", "--device", "cpu", "--model", str(model)],
        stdout=logs.open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path)
    prom: subprocess.Popen[bytes] | None = None
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        wait_for("/readyz", lambda: http_get(f"{base}/readyz")[0] == 200, 180, {daemon: logs})
        assert http_get(f"{base}/healthz")[0] == 200

        # One real job, so that the labelled series (op, result, device) exist.
        shutil.copy(ROOT / "bswd" / "samples" / "sample.png", inbox / "sample.png")
        wait_for("a .bsw in the output folder", lambda: list(outbox.glob("*.bsw")), 180, {daemon: logs})

        config = tmp_path / "prometheus.yml"
        shutil.copy(ALERTS, tmp_path / "alerts.yml")
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "bswd",
                                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
        }))
        prom = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=prom_logs.open("wb"), stderr=subprocess.STDOUT)
        api = f"http://127.0.0.1:{prom_port}/api/v1"

        def query(expr: str) -> list[dict[str, Any]]:
            status, body = http_get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
            reply = json.loads(body)
            assert status == 200 and reply["status"] == "success", f"{expr}: {reply}"
            return list(reply["data"]["result"])

        def scraped_ok() -> bool:
            up = query('up{job="bswd"}')
            done = query('bswd_jobs_completed_total{op="compress", result="ok"}')
            return bool(up) and up[0]["value"][1] == "1" and bool(done) and float(done[0]["value"][1]) >= 1

        wait_for("Prometheus to scrape the daemon", scraped_ok, 60, {daemon: logs, prom: prom_logs})

        # Every metric the dashboard and the alerts use is really exported by the daemon.
        names = set(json.loads(http_get(f"{api}/label/__name__/values")[1])["data"])
        for where, expr in all_exprs().items():
            missing = metric_names(expr) - names
            assert not missing, f"{where}: the daemon does not export {missing}"
        assert query("bswd_ready")[0]["value"][1] == "1"

        # Every dashboard query evaluates (Grafana's variables filled in).
        for where, expr in dashboard_exprs().items():
            if not where.startswith("$"):
                query(promql_for_promtool(expr).replace("5m", "10s"))

        # The alert rules load and evaluate cleanly, and a healthy daemon raises none.
        def rules_evaluated() -> list[dict[str, Any]] | None:
            groups = json.loads(http_get(f"{api}/rules")[1])["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else None

        rules = wait_for("alert rules to be evaluated", rules_evaluated, 30, {daemon: logs, prom: prom_logs})
        assert {r["name"] for r in rules} == set(alert_exprs())
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
        firing = [r["name"] for r in rules if r["state"] == "firing"]
        assert not firing, firing
    finally:
        if prom is not None:
            stop(prom)
        stop(daemon)
    assert daemon.returncode == 0, f"bswd did not drain cleanly on SIGTERM:\n{log_tail(logs)}"
