"""`make demo`'s pipeline, at smoke-test size: every stage runs and the report links what it made."""

import json
import re

from sim_tests.demo import quick_plan, run_demo


def test_demo_pipeline_writes_a_linked_report(tmp_path):
    report = run_demo(tmp_path / "demo", quick_plan())
    page = report.read_text()
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    (task,) = summary["tasks"]
    assert task["demos"] == 3 and task["train_bags"] == 2 and task["held_out"] == 1
    assert task["train_steps"] == 4
    assert task["closed_loop"]["episodes"] == 1 and task["closed_loop"]["non_finite_commands"] == 0
    # every relative link and image in the page exists (replay report, GIFs, loss plot)
    targets = re.findall(r"(?:href|src)='([^':]+)'", page)
    assert any(t.endswith("report.html") for t in targets) and any(t.endswith(".gif") for t in targets)
    for t in targets:
        assert (report.parent / t).is_file(), t
    assert "data:image/png;base64," in page  # the training curve, embedded
    replay = json.loads((report.parent / task["replay_report"]).with_name("metrics.json").read_text())
    assert set(next(iter(replay["checkpoints"].values()))["metrics"]) == {"faithful", "batch"}
