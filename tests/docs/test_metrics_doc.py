"""docs/metrics.md: its table lists exactly the metrics mfcd serves, with their types and
labels, and its example alert rules pass `promtool check rules` and behave as they say
under `promtool test rules`."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

from mfcd import metrics
from mfcd.model import AddRoute, Route
from mfcd.protocol import FAMILY_NAMES
from tests.unit.test_controller import LINKS, controller_with
from tests.unit.test_metrics import tool as metrics_tool

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def section(name: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    return text.split(f"<!-- {name} -->", 1)[1].split(f"<!-- /{name} -->", 1)[0]


def served() -> dict[str, tuple[str, set[str]]]:
    """Each metric of a page with every hook set: its type and label names."""
    ctl = controller_with(*LINKS)
    ctl.change([AddRoute.of(Route(4, "10.0.0.1", "239.1.1.1", "a", ("b",), 253))])
    registry = metrics.Registry(templates=lambda: {}, joins=lambda: {})
    registry.request("ping", "ok", 0.001)
    src = metrics.Sources(
        ctl.router, ctl.kernel, registry, Counter(), "1", metrics.Process(1, 2, 3, 4, 5, 6), 10
    )
    page = "".join(metrics.exposition(src))
    kinds = dict(re.findall(r"^# TYPE (\S+) (\S+)$", page, re.M))
    found: dict[str, tuple[str, set[str]]] = {name: (kind, set()) for name, kind in kinds.items()}
    for name, labels in re.findall(r"^(\w+)\{(.*)\} ", page, re.M):
        base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in kinds else name
        found[base][1].update(re.findall(r'(\w+)="', labels))
    for kind, labels in found.values():
        if kind == "histogram":
            labels.discard("le")
    return found


def test_the_table_lists_every_metric_with_its_type_and_labels() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| ?([\w, ]*?) ?\|", section("metrics"), re.M)
    documented = {
        name: (kind, {label.strip() for label in labels.split(",") if label.strip()})
        for name, kind, labels in rows
    }
    assert documented == served()
    assert set(FAMILY_NAMES.values()) == {"ipv4", "ipv6"}  # as the doc spells them


def test_the_example_alert_rules_pass_promtool_and_fire_as_described(tmp_path: Path) -> None:
    rules = section("alert-rules").split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "rules.yml").write_text(rules)
    tool = metrics_tool("promtool")
    checked = subprocess.run(
        [tool, "check", "rules", str(tmp_path / "rules.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "test.yml").write_text(RULE_TESTS)
    tested = subprocess.run(
        [tool, "test", "rules", str(tmp_path / "test.yml")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


# An idle route (stuck at 10 packets) and a busy one, added at minute 0; a pending route
# from minute 0. The idle one alerts once it has been installed and idle for 5 minutes,
# the busy one never; the pending one after 10 minutes, as a degraded template does.
_IDLE = 'source="198.18.0.2",group="239.1.1.1",iif="r0",table="253",family="ipv4"'
_BUSY = 'source="198.18.0.2",group="239.1.1.2",iif="r0",table="253",family="ipv4"'
_JOB = 'instance="r1:10040",job="mfcd"'
# Drift checks: r1 checks every minute and repairs once at minute 3; r2's last check was at
# minute 1; r3 (started at 0) never checked. Another exporter's process_start_time_seconds
# on r4 is no mfcd's.
_STUCK = 'instance="r2:10040",job="mfcd"'
_NEVER = 'instance="r3:10040",job="mfcd"'
_OTHER = 'instance="r4:9100",job="node"'
RULE_TESTS = f"""
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'mfcd_route_packets_total{{{_IDLE},{_JOB}}}'
        values: '10x20'
      - series: 'mfcd_route_packets_total{{{_BUSY},{_JOB}}}'
        values: '0+60x20'
      - series: 'mfcd_routes{{state="pending",origin="api",{_JOB}}}'
        values: '2x20'
      - series: 'mfcd_metrics_route_series_omitted{{{_JOB}}}'
        values: '0x20'
      - series: 'mfcd_templates{{state="degraded",origin="config",{_JOB}}}'
        values: '1x20'
      - series: 'mfcd_drift_repairs_total{{action="reissue_mfc",{_JOB}}}'
        values: '0x2 1x17'
      - series: 'mfcd_drift_repairs_total{{action="del_mfc",{_JOB}}}'
        values: '0x19'
      - series: 'mfcd_drift_check_last_timestamp_seconds{{{_JOB}}}'
        values: '0+60x20'
      - series: 'mfcd_drift_check_last_timestamp_seconds{{{_STUCK}}}'
        values: '60x20'
      - series: 'process_start_time_seconds{{{_JOB}}}'
        values: '0x20'
      - series: 'process_start_time_seconds{{{_STUCK}}}'
        values: '0x20'
      - series: 'process_start_time_seconds{{{_NEVER}}}'
        values: '0x20'
      - series: 'process_start_time_seconds{{{_OTHER}}}'
        values: '0x20'
      - series: 'mfcd_build_info{{version="1",{_JOB}}}'
        values: '1x20'
      - series: 'mfcd_build_info{{version="1",{_STUCK}}}'
        values: '1x20'
      - series: 'mfcd_build_info{{version="1",{_NEVER}}}'
        values: '1x20'
    alert_rule_test:
      - eval_time: 2m
        alertname: MulticastTablesRepaired
        exp_alerts: []
      - eval_time: 5m
        alertname: MulticastTablesRepaired
        exp_alerts:
          - exp_labels:
              severity: warning
              instance: r1:10040
              action: reissue_mfc
            exp_annotations:
              summary: "mfcd repaired its multicast routing tables (reissue_mfc)"
              description: "Another program changed them; the log and mfcctl monitor say what."
      - eval_time: 15m
        alertname: MulticastDriftChecksStopped
        exp_alerts: []
      - eval_time: 17m
        alertname: MulticastDriftChecksStopped
        exp_alerts:
          - exp_labels:
              severity: warning
              instance: r2:10040
              job: mfcd
            exp_annotations:
              summary: "mfcd has not checked its tables for drift for 15 minutes"
              description: "Is drift_check_interval 0, or is mfcd's event loop stuck?"
          - exp_labels:
              severity: warning
              instance: r3:10040
              job: mfcd
            exp_annotations:
              summary: "mfcd has not checked its tables for drift for 15 minutes"
              description: "Is drift_check_interval 0, or is mfcd's event loop stuck?"
      - eval_time: 4m
        alertname: MulticastRouteWithoutTraffic
        exp_alerts: []
      - eval_time: 6m
        alertname: MulticastRouteWithoutTraffic
        exp_alerts:
          - exp_labels:
              severity: warning
              source: 198.18.0.2
              group: 239.1.1.1
              iif: r0
              table: "253"
              family: ipv4
              instance: r1:10040
              job: mfcd
            exp_annotations:
              summary: "No packets from 198.18.0.2 to 239.1.1.1 for 5 minutes"
              description: "iif r0, table 253: see Troubleshooting in docs/operations."
      - eval_time: 9m
        alertname: MulticastRoutesNotInstalled
        exp_alerts: []
      - eval_time: 11m
        alertname: MulticastRoutesNotInstalled
        exp_alerts:
          - exp_labels:
              severity: warning
              instance: r1:10040
              state: pending
            exp_annotations:
              summary: "2 routes pending for 10 minutes"
              description: "mfcctl show says which interfaces they wait for."
      - eval_time: 11m
        alertname: MulticastRouteSeriesOmitted
        exp_alerts: []
      - eval_time: 11m
        alertname: MulticastTemplatesNotInstalled
        exp_alerts:
          - exp_labels:
              severity: warning
              instance: r1:10040
              state: degraded
            exp_annotations:
              summary: "1 templates degraded for 10 minutes"
              description: "mfcctl show says which interfaces they wait for."
"""
