"""The end-to-end demo (`make demo`): demonstrations -> training -> offline replay -> closed loop -> report.

For each task: the scripted expert's episodes are recorded as rosbag2 (the robot's topic layout), the
encoder is pretrained on labelled frames (`sim_tests.pretrain`), a policy is trained on the
demonstrations with `vit_policy.train`, checked offline on held-out bags with
`vit_policy.replay` (faithful + batch), and run closed loop in MuJoCo through `PolicyRunner` with the
node's safety and chunk execution. One HTML page links everything. Sized for 2 CPU cores in 30 minutes
(21.7 measured): the policy is `configs/sim/policy.yaml` (timm's `test_vit`, every patch token kept),
because no pretrained weights can be downloaded here and a vit_tiny training step costs 4-5x as much
on a CPU (`benchmarks/sim_success.py --step-times`); `vit-policy demo encoder.name=...` overrides it.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sim_tests.configuration import load_sim_config
from vit_policy.config import ConfigError, from_dict, to_dict

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
STAGE_DIRS = ("bags", "train", "replay", "sim")  # what run_task writes under the output directory
MARKER = ".vit_policy_demo"  # marks an output directory as the demo's own, so a rerun may replace it


@dataclass
class TaskPlan:
    """One task's recipe: how much of each stage it gets. Stored as YAML under configs/sim/recipes/,
    read by the demo and by ``benchmarks/sim_success.py --recipe``."""

    task: str
    sim_config: str  # under configs/sim/
    demos: int  # recorded successful expert episodes
    max_steps: int  # optimiser steps
    eval_episodes: int  # closed-loop episodes
    held_out: int = 0  # of the demonstrations, kept for replay evaluation only (the demo)
    demo_steps: int | None = None  # env steps per recorded episode (None: the sim config's)
    hold_steps: int | None = None  # end each bag this many steps after the first success (None: whole episodes)
    sim_overrides: list[str] = field(default_factory=list)
    gifs: int = 3
    action_noise_m: float = 0.0  # DART execution noise while recording (sim_tests.record.record_episode)
    pretrain_resets: int = 0  # > 0: first pretrain the encoder on that many x 8 labelled frames (sim_tests.pretrain)
    pretrain_steps: int = 0
    pretrain_expert: float = 0.0  # share of the pretraining resets the scripted expert drives (sim_tests.pretrain)
    # non-empty: pretrain on the training demonstrations' own frames instead, labelled in hindsight with these
    # points (ee, end, grasp: vit_policy.pretrain.hindsight_points); no simulator label. Exclusive with pretrain_resets
    pretrain_hindsight: list[str] = field(default_factory=list)
    pretrain_shift_px: int = 0  # hindsight pretraining: random image shift of up to this many pixels (vit_policy.pretrain.random_shift)
    expert: dict[str, Any] = field(default_factory=dict)  # the recording expert's settings (sim_tests.experts.make_expert)

    def __post_init__(self) -> None:
        if self.pretrain_hindsight and self.pretrain_resets:
            raise ConfigError("pretrain_hindsight and pretrain_resets: pretrain either on the demonstrations (label-free) "
                              "or on labelled simulator frames, not both")
        from vit_policy.pretrain import HINDSIGHT_POINTS

        if not set(self.pretrain_hindsight) <= set(HINDSIGHT_POINTS):
            raise ConfigError(f"pretrain_hindsight: {self.pretrain_hindsight}; choose points from {list(HINDSIGHT_POINTS)}")
        if self.pretrain_shift_px < 0:
            raise ConfigError(f"pretrain_shift_px: {self.pretrain_shift_px} must be >= 0 (0: no image shift)")
        if self.pretrains and self.pretrain_steps < 1:
            raise ConfigError("pretrain_steps: set the encoder pretraining steps (>= 1)")
        from sim_tests.experts import make_expert

        try:
            make_expert(self.task, self.expert)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def sim_configs(self) -> tuple[Any, Any]:
        """The task's sim config for evaluation and the one its demonstrations are recorded with (``demo_steps``)."""
        steps = [f"episode_steps={self.demo_steps}"] if self.demo_steps else []
        return (load_sim_config(CONFIGS / "sim" / self.sim_config, self.sim_overrides),
                load_sim_config(CONFIGS / "sim" / self.sim_config, [*self.sim_overrides, *steps]))

    def record(self, cfg: Any, out: Path, seed: int = 0, progress: Callable[[Any], None] | None = None) -> list[Any]:
        """Record the recipe's expert demonstrations with ``cfg`` (its recording sim config) into ``out``."""
        from sim_tests.record import record_demonstrations

        return record_demonstrations(cfg, out, self.demos, seed=seed, progress=progress, action_noise_m=self.action_noise_m,
                                     hold_steps=self.hold_steps, expert_options=self.expert)

    @property
    def pretrains(self) -> bool:
        """Whether the recipe pretrains its encoder first (on simulator labels or in hindsight)."""
        return bool(self.pretrain_resets or self.pretrain_hindsight)

    @property
    def simulator_labels(self) -> bool:
        """Whether the recipe reads simulator state as a training label (the README's results say so)."""
        return self.pretrain_resets > 0
    policy_overrides: list[str] = field(default_factory=list)  # this task's; the plan's (the command line's) come after
    train_overrides: list[str] = field(default_factory=list)  # TrainConfig KEY=VALUE, e.g. augment.pose_noise_m=0.005


RECIPES = CONFIGS / "sim" / "recipes"


def load_recipe(path: str | Path) -> TaskPlan:
    """A recipe YAML (a bare name means configs/sim/recipes/<name>.yaml); unknown keys fail with the nearest one."""
    from vit_policy.config import read_yaml

    path = Path(path)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        path = RECIPES / f"{path}.yaml"
    return from_dict(TaskPlan, read_yaml(path), str(path))


def record_recipe(tp: TaskPlan, root: Path, seed: int = 0) -> tuple[Any, list[str], float]:
    """The recipe's sim config, its expert demonstrations under ``root/demos`` (recorded unless already there: a
    peer trains on exactly these bags) and the seconds recording took (0 when reused)."""
    sim, record = tp.sim_configs()
    t0 = time.perf_counter()
    if not (root / "demos" / "demos.yaml").is_file():
        tp.record(record, root / "demos", seed=seed)
    return sim, sorted(str(p) for p in (root / "demos").glob("episode_*")), time.perf_counter() - t0


@dataclass
class DemoPlan:
    tasks: list[TaskPlan] = field(default_factory=lambda: [load_recipe("demo_reach"), load_recipe("demo_push")])
    batch_size: int = 32
    seed: int = 0
    policy_overrides: list[str] = field(default_factory=list)  # configs/sim/policy.yaml overrides, every task


def quick_plan() -> DemoPlan:
    """The smoke run (`demo --quick`, the test suite): every stage runs on FetchReach, nothing is expected to learn."""
    return DemoPlan(tasks=[TaskPlan("FetchReach-v4", "fetch_reach.yaml", demos=3, held_out=1, max_steps=4, eval_episodes=1,
                                    demo_steps=10, sim_overrides=["image_size=64", "episode_steps=15"], gifs=1, action_noise_m=0.02,
                                    pretrain_hindsight=["ee", "end"], pretrain_steps=2, policy_overrides=["points.count=2", "encoder.freeze=all"])],
                    batch_size=8)


def run_task(tp: TaskPlan, plan: DemoPlan, out: Path) -> dict[str, Any]:
    """All four stages for one task; returns what the report shows."""
    from sim_tests.closed_loop import evaluate_policy, evaluate_random
    from sim_tests.record import data_config_for, train_config_for
    from vit_policy.replay import ReplayConfig
    from vit_policy.model.policy import VisuomotorPolicy
    from vit_policy.replay import replay_checkpoints
    from vit_policy.train import train

    sim, record_sim = tp.sim_configs()
    row: dict[str, Any] = {"task": tp.task, "cameras": list(sim.cameras), "image_size": sim.image_size}

    print(f"\n== {tp.task}: recording {tp.demos} expert demonstrations")
    t0 = time.perf_counter()
    bag_dir = out / "bags" / tp.task
    from tqdm.auto import tqdm

    with tqdm(total=tp.demos, desc=f"record {tp.task}", unit="demo", dynamic_ncols=True) as bar:
        infos = tp.record(record_sim, bag_dir, seed=plan.seed, progress=lambda _: bar.update(1))
    bags = [bag_dir / i.bag for i in infos]
    train_bags, test_bags = bags[: len(bags) - tp.held_out], bags[len(bags) - tp.held_out :]
    row.update(demos=len(bags), train_bags=len(train_bags), held_out=len(test_bags), record_s=time.perf_counter() - t0)

    policy_overrides = [*tp.policy_overrides, *plan.policy_overrides]
    row["pretrain"] = None
    from sim_tests.pretrain import pretrain_for_recipe

    t0 = time.perf_counter()
    pre = pretrain_for_recipe(tp, sim, list(train_bags), out / "train" / tp.task / "pretrained_encoder.safetensors", policy_overrides, plan.seed)
    if pre is not None:
        print(pre.table())
        row["pretrain"] = {"frames": pre.frames, "labels": "simulator" if tp.simulator_labels else "hindsight", "steps": pre.steps,
                           "s": time.perf_counter() - t0, "val_error_m": pre.val_error_m}
        policy_overrides.append(f"encoder.weights={pre.path}")
    cfg = train_config_for(sim, [str(p) for p in train_bags], out / "train" / tp.task, tp.max_steps, plan.batch_size,
                           policy_overrides=policy_overrides, overrides=tp.train_overrides)
    cfg.progress, cfg.tensorboard, cfg.seed = True, True, plan.seed
    print(f"== {tp.task}: training {cfg.policy.encoder.name} ({cfg.policy.encoder.token_mode} tokens) for {tp.max_steps} steps "
          f"on {len(train_bags)} demonstrations")
    t0 = time.perf_counter()
    result = train(cfg)
    row.update(train_s=time.perf_counter() - t0, train_steps=result.step, encoder=cfg.policy.encoder.name)
    row["history"] = result.history
    final = result.history[-1] if result.history else {}
    row["val_loss"], row["val_baseline"] = final.get("val/loss"), final.get("val/baseline_loss")
    ckpt = result.last  # the closed-loop recipe measured on the last weights (validation is a few short episodes)
    row["checkpoint"] = str(ckpt)

    print(f"== {tp.task}: offline replay on {len(test_bags)} held-out bags")
    replay_cfg = from_dict(ReplayConfig, {"data": to_dict(data_config_for(sim, labels="command")),
                                          "runtime": to_dict(sim.runtime) | {"inference_latency_s": 0.0}, "safety": to_dict(sim.safety)})
    replay_out = out / "replay" / tp.task
    replay_checkpoints([ckpt], test_bags, replay_out, replay_cfg)
    row["replay_report"] = str((replay_out / "report.html").relative_to(out))
    row["replay"] = json.loads((replay_out / "metrics.json").read_text())

    print(f"== {tp.task}: closed loop, {tp.eval_episodes} episodes through PolicyRunner")
    policy = VisuomotorPolicy.from_pretrained(ckpt).eval()
    sim_out = out / "sim" / tp.task
    report = evaluate_policy(policy, sim, tp.eval_episodes, seed=10_000 + plan.seed, out_dir=sim_out, gifs=tp.gifs, progress=True)
    rand = evaluate_random(sim, tp.eval_episodes, seed=10_000 + plan.seed)
    print(report.table().splitlines()[-1])
    row["closed_loop"] = report.summary()
    row["random"] = rand.summary()
    row["gifs"] = [str(Path(e.gif).relative_to(out)) for e in report.episodes if e.gif]
    return row


def _loss_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Validation loss against the mean-action predictor, per task, over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    drawn = False
    for r in rows:
        pts = [(h.get("step"), h.get("val/loss")) for h in r["history"] if h.get("val/loss") is not None]
        if not pts:
            continue
        steps, losses = zip(*pts)
        line, = ax.plot(steps, losses, marker="o", label=f"{r['task']} validation loss")
        if r.get("val_baseline") is not None:
            ax.axhline(r["val_baseline"], color=line.get_color(), ls="--", lw=1, label=f"{r['task']} mean-action predictor")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (normalised L1 + BCE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


# a pretraining's labels (run_task's row["pretrain"]["labels"]): (report table cell, how the encoder learnt)
LABELS = {"simulator": ("labelled by the simulator", "pretrained on frames labelled with the simulator's goal, object and EE positions "
                        "(simulator labels), then trained on the demonstrations"),
          "hindsight": ("labelled in hindsight", "pretrained on its demonstrations' own frames labelled in hindsight (no simulator label), "
                        "then trained on them")}


def _how(row: dict[str, Any]) -> str:
    """How a task's encoder learnt, saying whether simulator state was a training label."""
    pre = row.get("pretrain")
    return LABELS[pre.get("labels", "simulator")][1] if pre else "trained from scratch"


def write_report(out: Path, rows: list[dict[str, Any]], wall_s: float) -> Path:
    """outputs/demo/report.html: one table per stage, the loss plot, links to replay reports, rollout GIFs."""
    loss_png = _loss_plot(rows, out / "training_loss.png")
    trs = []
    for r in rows:
        cl, rnd = r["closed_loop"], r["random"]
        faithful = next((m for k, m in _modes(r["replay"]) if k == "faithful"), {})
        pre = r.get("pretrain")
        goal = next((k for k in pre["val_error_m"] if k != "ee"), next(iter(pre["val_error_m"]))) if pre else ""  # the goal, not the arm
        pre_cell = ("-" if not pre else f"{pre['frames']} frames {LABELS[pre.get('labels', 'simulator')][0]}, {pre['steps']} steps, "
                    f"{pre['s'] / 60:.1f} min; new goals ({goal}) placed to {100 * pre['val_error_m'][goal]:.1f} cm")
        mae = faithful.get("translation_mae_mm", {})
        trs.append(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                r["task"], ", ".join(r["cameras"]) + f" @ {r['image_size']} px, {r['encoder']}", f"{r['train_bags']} + {r['held_out']} held out", pre_cell,
                f"{r['train_steps']} steps, {r['train_s'] / 60:.1f} min",
                f"{_fmt(r['val_loss'], '.3f')} vs {_fmt(r['val_baseline'], '.3f')}",
                " / ".join(_fmt(mae.get(a)) for a in ("x", "y", "z")),
                f"{cl['successes']}/{cl['episodes']} = {cl['success_rate']:.0%} [{cl['wilson95'][0]:.0%}, {cl['wilson95'][1]:.0%}]",
                f"{rnd['successes']}/{rnd['episodes']}",
                _fmt(cl["mean_time_to_success_s"], ".2f"),
            )) + f"<td><a href='{html.escape(r['replay_report'])}'>replay report</a></td></tr>"
        )
    gifs = "".join(
        f"<figure><img src='{html.escape(g)}' width='192'><figcaption>{html.escape(r['task'])} {html.escape(Path(g).stem)}</figcaption></figure>"
        for r in rows for g in r["gifs"]
    )
    loss_img = ""
    if loss_png is not None:
        data = base64.b64encode(loss_png.read_bytes()).decode()
        loss_img = f"<h2>Training</h2><a href='{loss_png.name}'><img src='data:image/png;base64,{data}'></a>"
    encoders = ", ".join(sorted({r["encoder"] for r in rows}))
    how = "; ".join(f"{r['task']} {_how(r)}" for r in rows)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vit_policy demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}} figure{{display:inline-block;margin:4px}}</style></head><body>
<h1>vit_policy end-to-end demo</h1>
<p>Scripted-expert demonstrations recorded as rosbag2 &rarr; {html.escape(encoders)} on the CPU ({html.escape(how)}) &rarr; offline replay on held-out bags
(the node's PolicyRunner on bag time) &rarr; closed loop in MuJoCo through the same runner and safety filter. Total {wall_s / 60:.1f} min.</p>
<table><tr><th>task</th><th>cameras, encoder</th><th>demonstrations</th><th>encoder pretraining (labelled frames, no actions)</th><th>training</th><th>val loss vs mean predictor</th>
<th>replay MAE x/y/z mm (faithful)</th><th>closed-loop success [Wilson 95%]</th><th>random actions</th><th>time to success s</th><th></th></tr>
{''.join(trs)}</table>
{loss_img}
<h2>Closed-loop rollouts</h2>{gifs or '<p>no GIFs</p>'}
<p><a href='summary.json'>summary.json</a></p></body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def _modes(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(mode, metrics) pairs of the one checkpoint in a replay metrics.json."""
    (ckpt,) = metrics["checkpoints"].values()
    return list(ckpt["metrics"].items())


def run_demo(out_dir: str | Path = "outputs/demo", plan: DemoPlan | None = None) -> Path:
    """Run every stage for every task of ``plan``; returns the report path."""
    plan = plan or DemoPlan()
    out = Path(out_dir)
    stale = [out / d for d in STAGE_DIRS if (out / d).exists()]
    if stale and not (out / MARKER).is_file():
        raise FileExistsError(f"{out} already has {', '.join(d.name for d in stale)} not written by the demo; choose another --out")
    if stale:  # a previous demo run: a rerun replaces it instead of failing on its bags
        print(f"replacing the previous demo run in {out}")
        for d in stale:
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by vit-policy demo: a rerun replaces bags/, train/, replay/ and sim/ here\n")
    t0 = time.perf_counter()
    rows = [run_task(tp, plan, out) for tp in plan.tasks]
    wall = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps({"wall_s": wall, "tasks": rows}, indent=2, default=str))
    report = write_report(out, rows, wall)
    print(f"\ndemo finished in {wall / 60:.1f} min")
    for r in rows:
        cl = r["closed_loop"]
        print(f"  {r['task']}: closed-loop success {cl['successes']}/{cl['episodes']} (random actions {r['random']['successes']}/{r['random']['episodes']})")
    print(f"report: {report.resolve()}")
    return report


def check_plan(plan: DemoPlan) -> None:
    """Build every task's sim, policy and training config now, so a bad override fails before any work."""
    from sim_tests.record import train_config_for

    for tp in plan.tasks:
        sim, _ = tp.sim_configs()
        # a pretraining recipe trains on the encoder file it is about to write (points_loss needs one)
        weights = ["encoder.weights=unused/pretrained_encoder.safetensors"] if tp.pretrains else []
        train_config_for(sim, ["not-read"], "unused", tp.max_steps, plan.batch_size,
                         policy_overrides=[*tp.policy_overrides, *weights, *plan.policy_overrides], overrides=tp.train_overrides)
