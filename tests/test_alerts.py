"""The alerting rules next to the dashboard: valid for ``promtool check rules``, behaving as their
unit tests say (``promtool test rules``), and naming only metric families a running gateway with
its in-process worker really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from streamproxy.jobs.routes import start_jobs
from tests.helpers.gateway import engine, gateway, gateway_config
from tests.helpers.jobs import redis_server, unique_prefix
from tests.test_metrics import DASHBOARD, dashboard_exprs, metric_names, scrape

GRAFANA = Path(__file__).resolve().parent.parent / "grafana"
ALERTS = GRAFANA / "alerts.yml"
ALERT_TESTS = GRAFANA / "alerts.test.yml"
METRIC = re.compile(r"\bstreamproxy_[a-z0-9_]+")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is required (Debian: apt-get install prometheus; .ci/run installs it)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False, cwd=GRAFANA)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", ALERTS.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout, r.stdout


def test_promtool_rule_unit_tests() -> None:
    """Each alert fires on the instance it should, at the time it should, and not on the other."""
    r = promtool("test", "rules", ALERT_TESTS.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested == {r["alert"] for r in rules() if "alert" in r}, "every alert has a unit test"


def test_rollback_rule_is_the_seed_rule() -> None:
    (rb,) = [r for r in rules() if r.get("alert") == "StreamproxyRollback"]
    assert "> 0.4" in rb["expr"] and "> 0.01" in rb["expr"] and rb["labels"]["action"] == "rollback"
    alerts = {r["alert"] for r in rules() if "alert" in r}
    for needed in ("UpstreamBreakerOpen", "AudioDropped", "QueueBacklog", "JobsStalled"):
        assert f"Streamproxy{needed}" in alerts


async def test_rules_and_dashboard_name_only_exported_metrics(tmp_path: Path) -> None:
    """Every ``streamproxy_*`` name in a rule or a dashboard query is in a live ``/metrics`` of
    ``serve`` with its in-process worker (so worker families are there too)."""
    records = {r["record"]: set(METRIC.findall(r["expr"])) for r in rules() if "record" in r}
    used_by_rule = {}
    for r in rules():  # a rule reading a recording rule uses the families that one reads
        used = set(METRIC.findall(r["expr"]))
        used |= {n for rec, names in records.items() if rec in r["expr"] for n in names}
        used_by_rule[r.get("alert") or r["record"]] = used
    dash = set(METRIC.findall(" ".join(dashboard_exprs(json.loads(DASHBOARD.read_text())))))
    async with redis_server(tmp_path / "redis") as rs, engine("marker") as eport:
        overrides = {
            "queue.redis_url": rs.url,
            "queue.prefix": unique_prefix(),
            "queue.serve_worker": True,
            "server.data_dir": str(tmp_path / "data"),
        }
        async with gateway(gateway_config([f"ws://127.0.0.1:{eport}"], **overrides)) as gw:
            await start_jobs(gw.runner.app)
            exported = metric_names(await scrape(gw.port))
    for name, used in used_by_rule.items():
        assert used, name
        assert used <= exported, (name, sorted(used - exported))
    assert dash <= exported, sorted(dash - exported)
    assert any(n.startswith("streamproxy_worker_") for n in dash), "the dashboard shows the worker families"
