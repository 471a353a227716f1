"""The asset graph is reviewed like code: a change of keys, dependencies, partitions, groups or checks
shows up as a diff of `asset_graph.snapshot.txt`. Regenerate it on purpose with
`KAIROS_UPDATE_SNAPSHOT=1 .venv/bin/pytest kairos_dagster_tests/defs/test_graph_snapshot.py`."""

import os
from pathlib import Path

from kairos_dagster.definitions import build_definitions

defs = build_definitions()


SNAPSHOT = Path(__file__).with_name("asset_graph.snapshot.txt")


def render_graph() -> str:
    graph = defs.resolve_asset_graph()
    lines = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        parts = "weekly" if node.partitions_def is not None else "unpartitioned"
        deps = ", ".join(sorted(p.to_user_string() for p in node.parent_keys)) or "-"
        checks = ", ".join(sorted(c.name for c in node.check_keys)) or "-"
        lines.append(f"{key.to_user_string()} [{node.group_name}; {parts}]\n    deps: {deps}\n    checks: {checks}")
    jobs = sorted(j.name for j in defs.jobs or [])
    schedules = sorted(s.name for s in defs.schedules or [])
    sensors = sorted(s.name for s in defs.sensors or [])
    lines.append(f"jobs: {', '.join(jobs)}\nschedules: {', '.join(schedules)}\nsensors: {', '.join(sensors)}")
    return "\n".join(lines) + "\n"


def test_asset_graph_matches_snapshot():
    rendered = render_graph()
    if os.environ.get("KAIROS_UPDATE_SNAPSHOT") == "1" or not SNAPSHOT.exists():
        SNAPSHOT.write_text(rendered)
    assert rendered == SNAPSHOT.read_text(), "asset graph changed: review the diff and regenerate the snapshot"


def test_every_check_is_described_and_partitioned_like_its_asset():
    graph = defs.resolve_asset_graph()
    specs = [spec for a in defs.assets for spec in getattr(a, "check_specs", [])]
    assert len(specs) >= 60
    undescribed = [str(s.key) for s in specs if not (s.description or "").strip()]
    assert not undescribed, undescribed
    mismatched = [str(s.key) for s in specs if s.partitions_def != graph.get(s.asset_key).partitions_def]
    assert not mismatched, mismatched
