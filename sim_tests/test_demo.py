"""`make demo`'s pipeline, at smoke-test size: every stage runs and the report links what it made.

Run as its own process, the way `make demo` runs it: recording (MuJoCo/EGL), training and replay in
one process is the demo's real shape, and keeping it out of the pytest process keeps the GL and
torch state of later simulator tests independent of it (a later test segfaulted when it ran in-process).
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_demo_pipeline_writes_a_linked_report(tmp_path):
    out = tmp_path / "demo"
    (out / "bags" / "FetchReach-v4" / "episode_000").mkdir(parents=True)  # a previous run's bag: replaced, not an error
    (out / ".vit_policy_demo").touch()
    res = subprocess.run([sys.executable, "-m", "vit_policy.cli", "demo", "--quick", "--out", str(out), "--threads", "1", "chunk_size=4"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = out / "report.html"
    assert f"report: {report.resolve()}" in res.stdout and "replacing the previous demo run" in res.stdout
    page = report.read_text()
    summary = json.loads((out / "summary.json").read_text())
    (task,) = summary["tasks"]
    assert task["demos"] == 3 and task["train_bags"] == 2 and task["held_out"] == 1
    assert task["train_steps"] == 4
    trained = yaml.safe_load((Path(task["checkpoint"]) / "config.yaml").read_text())
    assert trained["chunk_size"] == 4  # the policy override reached training
    assert task["pretrain"]["frames"] == 20 and task["pretrain"]["steps"] == 2 and task["pretrain"]["labels"] == "hindsight"
    assert trained["points"]["count"] == 2 and trained["encoder"]["freeze"] == "all"  # the task's overrides, beside the command line's
    assert trained["encoder"]["weights"] == str(out / "train" / "FetchReach-v4" / "pretrained_encoder.safetensors")  # training started from it
    assert "FetchReach-v4 pretrained on its demonstrations&#x27; own frames labelled in hindsight (no simulator label)" in page
    assert "20 frames labelled in hindsight, 2 steps" in page and "new goals (end) placed to" in page and "simulator labels" not in page
    assert task["closed_loop"]["episodes"] == 1 and task["closed_loop"]["non_finite_commands"] == 0
    # every relative link and image in the page exists (replay report, GIFs, loss plot)
    targets = re.findall(r"(?:href|src)='([^':]+)'", page)
    assert any(t.endswith("report.html") for t in targets) and any(t.endswith(".gif") for t in targets)
    for t in targets:
        assert (out / t).is_file(), t
    assert "data:image/png;base64," in page  # the training curve, embedded
    replay = json.loads((out / task["replay_report"]).with_name("metrics.json").read_text())
    assert set(next(iter(replay["checkpoints"].values()))["metrics"]) == {"faithful", "batch"}


def test_demo_rejects_a_bad_policy_override_before_any_work(tmp_path):
    res = subprocess.run([sys.executable, "-m", "vit_policy.cli", "demo", "--out", str(tmp_path / "demo"), "encoder.nmae=vit_tiny"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "encoder.nmae" in res.stderr and "did you mean 'name'" in res.stderr
    assert not (tmp_path / "demo").exists()


def test_every_task_of_the_default_plan_builds_its_configs():
    """The demo's own plan (not run here: it takes 20+ minutes) is checked the way a command line is."""
    from sim_tests.demo import DemoPlan, check_plan
    from vit_policy.config import ConfigError

    plan = DemoPlan()
    check_plan(plan)
    plan.tasks[-1].train_overrides = ["augment.pose_noise=0.005"]
    with pytest.raises(ConfigError, match="pose_noise"):
        check_plan(plan)


def test_every_shipped_recipe_builds_its_configs_and_a_bad_key_is_named(tmp_path):
    """configs/sim/recipes/*.yaml (the demo's and the benchmark's rows) load and build their configs."""
    from sim_tests.demo import RECIPES, DemoPlan, check_plan, load_recipe
    from vit_policy.config import ConfigError

    recipes = sorted(RECIPES.glob("*.yaml"))
    assert {"demo_reach", "demo_push", "reach_labels", "reach_hindsight", "push_labels", "pick_labels"} <= {p.stem for p in recipes}
    check_plan(DemoPlan(tasks=[load_recipe(p) for p in recipes]))
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "demo_reach.yaml").read_text().replace("pretrain_steps:", "pretrain_step:"))
    with pytest.raises(ConfigError, match="pretrain_step.*pretrain_steps"):
        load_recipe(bad)
    hindsight = load_recipe("reach_hindsight")
    assert hindsight.pretrain_hindsight == ["ee", "end"] and not hindsight.simulator_labels and load_recipe("reach_labels").simulator_labels
    both = tmp_path / "both.yaml"
    both.write_text((RECIPES / "reach_hindsight.yaml").read_text() + "pretrain_resets: 100\n")
    with pytest.raises(ConfigError, match="pretrain_hindsight and pretrain_resets: pretrain either on the demonstrations"):
        load_recipe(both)
    assert load_recipe("push_hindsight").pretrain_shift_px == 4
    shifted = tmp_path / "shifted.yaml"
    shifted.write_text((RECIPES / "reach_hindsight.yaml").read_text() + "pretrain_shift_px: -2\n")
    with pytest.raises(ConfigError, match="pretrain_shift_px: -2 must be >= 0"):
        load_recipe(shifted)
    expert = tmp_path / "expert.yaml"
    expert.write_text((RECIPES / "push_hindsight.yaml").read_text() + "expert: {finish: drop}\n")
    with pytest.raises(ConfigError, match="expert.finish: 'drop'; choose 'hold' or 'lift'"):
        load_recipe(expert)
    # points_loss trains on the encoder file the recipe's pretraining is about to write; without pretraining it fails first
    aux = tmp_path / "aux.yaml"
    aux.write_text((RECIPES / "push_hindsight.yaml").read_text().replace("train_overrides: [", "train_overrides: [points_loss=1.0, "))
    check_plan(DemoPlan(tasks=[load_recipe(aux)]))
    unlabelled = tmp_path / "unlabelled.yaml"
    unlabelled.write_text((RECIPES / "reach_no_labels.yaml").read_text() + "train_overrides: [points_loss=1.0]\n")
    with pytest.raises(ConfigError, match="points_loss: needs a pretrained point head"):
        check_plan(DemoPlan(tasks=[load_recipe(unlabelled)]))


def test_demo_never_deletes_a_directory_it_did_not_write(tmp_path):
    from sim_tests.demo import run_demo

    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "mine.txt").write_text("not the demo's")
    with pytest.raises(FileExistsError, match="not written by the demo"):
        run_demo(tmp_path)
    assert (tmp_path / "train" / "mine.txt").is_file()
