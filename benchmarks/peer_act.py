"""The peer: LeRobot ACT trained on exactly the demonstrations a recipe records, evaluated in the same closed loop.

    .venv/bin/python benchmarks/peer_act.py --recipe reach_hindsight [--minutes 30] [--lr 1e-5 1e-4] [--chunk 20]
        [--sweep-minutes 5] [--episodes 50] [--out outputs/peer_act] [--threads 2]

One command per row: it records the recipe's expert demonstrations into ``<out>/<task>/demos`` unless they
are there (give the same ``--out`` as ``benchmarks/sim_success.py`` to train both on the very same bags),
reads them through this project's bag reader (frames, EE pose, gripper; the expert's recorded commands as
actions), trains lerobot 0.4.4's ``ACTPolicy`` (ResNet18 from random init: no weights can be downloaded
here; its defaults otherwise: dim 512, 4 + 1 layers, VAE with KL weight 10, AdamW 1e-5 / weight decay 1e-4,
batch 8, gradient clip 10) and evaluates it on the seeds ``sim_success.py`` uses, with and without ACT's
temporal ensembling (coefficient 0.01). ACT reads the frames at the recipe's image size and the state
[EE position, quaternion x y z w, gripper]; it predicts absolute EE target positions and the gripper
target (the Fetch tasks keep the gripper pointing down, as the expert's commands do).

The sweep: every (learning rate, chunk size) pair trains ``--sweep-minutes``; the one with the lowest
validation L1 (last tenth of the demonstrations) keeps training until ``--minutes`` in all. Prints one
table; writes ``<out>/<task>/act.json``.

lerobot pins torch < 2.11; it is installed without its dependencies beside this project's torch by
``tests/lerobot_env.py`` (about a minute from PyPI), and this script re-runs itself with it on the path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import lerobot_env  # noqa: E402  (tests/: the lerobot venv beside this one)

EVAL_SEED = 100_000  # benchmarks/sim_success.py's: evaluation never sees a demonstration's goal
ENSEMBLE_COEFF = 0.01  # ACT's temporal ensembling, as in its paper


@dataclass
class ActData:
    """Demonstrations as ACT reads them: frames (N, 3, H, W) uint8 per camera, state (N, 8), action chunks (N, K, 4)."""

    images: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    is_pad: np.ndarray  # (N, K) True past the episode's end

    def take(self, idx: np.ndarray) -> "ActData":
        return ActData({c: v[idx] for c, v in self.images.items()}, self.state[idx], self.action[idx], self.is_pad[idx])

    def __len__(self) -> int:
        return len(self.state)


def act_data(cfg: Any, bags: list[str], chunk: int) -> tuple[ActData, int]:
    """The bags through the project's reader (``labels: command``: the expert's recorded targets), as ACT samples;
    and the index where the last tenth of the demonstrations (validation) starts."""
    from sim_tests.record import data_config_for
    from vit_policy.data.bags import extract_episodes

    data = data_config_for(cfg, labels="command")
    size = (cfg.image_size, cfg.image_size)
    episodes = [ep for bag in bags for ep in extract_episodes(bag, data, chunk, size)]
    val_from_episode = len(episodes) - max(1, len(episodes) // 10)
    parts, val_start = [], 0
    for i, ep in enumerate(episodes):
        if i == val_from_episode:
            val_start = sum(len(p.state) for p in parts)
        target = ep.position[:, None, :] + ep.action[..., :3]  # absolute EE targets of the next K steps
        parts.append(ActData({c: np.ascontiguousarray(v.transpose(0, 3, 1, 2)) for c, v in ep.images.items()},
                             np.concatenate([ep.position, ep.quaternion, ep.gripper[:, None]], axis=1).astype(np.float32),
                             np.concatenate([target, ep.action[..., 9:10]], axis=-1).astype(np.float32), ~ep.action_mask))
    cams = list(parts[0].images)
    return ActData({c: np.concatenate([p.images[c] for p in parts]) for c in cams}, np.concatenate([p.state for p in parts]),
                   np.concatenate([p.action for p in parts]), np.concatenate([p.is_pad for p in parts])), val_start


class Normalizer:
    """Mean / std of the training split (what lerobot's processors do for MEAN_STD features)."""

    def __init__(self, train: ActData) -> None:
        import torch

        self.state = (torch.from_numpy(train.state.mean(0)), torch.from_numpy(train.state.std(0) + 1e-4))
        valid = train.action[~train.is_pad]
        self.action = (torch.from_numpy(valid.mean(0)), torch.from_numpy(valid.std(0) + 1e-4))
        self.images = {}
        for c, v in train.images.items():
            x = v[:: max(1, len(v) // 500)].astype(np.float32) / 255.0
            self.images[c] = (torch.from_numpy(x.mean((0, 2, 3))).view(3, 1, 1), torch.from_numpy(x.std((0, 2, 3)) + 1e-3).view(3, 1, 1))

    def batch(self, d: ActData) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {}
        for c, v in d.images.items():
            m, s = self.images[c]
            out[f"observation.images.{c}"] = (torch.from_numpy(v).float() / 255.0 - m) / s
        out["observation.state"] = (torch.from_numpy(d.state) - self.state[0]) / self.state[1]
        out["action"] = (torch.from_numpy(d.action) - self.action[0]) / self.action[1]
        out["action_is_pad"] = torch.from_numpy(d.is_pad)
        return out

    def unnormalize_action(self, a: Any) -> np.ndarray:
        return (a * self.action[1] + self.action[0]).numpy(force=True)


def make_act(data: ActData, chunk: int, lr: float) -> tuple[Any, Any]:
    """lerobot's ACTPolicy for these features (ResNet18 from random init, its defaults otherwise) and its AdamW."""
    import torch
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    feats = {f"observation.images.{c}": PolicyFeature(type=FeatureType.VISUAL, shape=v.shape[1:]) for c, v in data.images.items()}
    feats["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(data.state.shape[1],))
    cfg = ACTConfig(input_features=feats, output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(data.action.shape[2],))},
                    pretrained_backbone_weights=None, chunk_size=chunk, n_action_steps=chunk, optimizer_lr=lr, optimizer_lr_backbone=lr)
    policy = ACTPolicy(cfg)
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=cfg.optimizer_lr, weight_decay=cfg.optimizer_weight_decay)
    return policy, optimizer


@dataclass
class Run:
    lr: float
    chunk: int
    policy: Any
    optimizer: Any
    norm: Normalizer
    train: ActData
    val: ActData
    steps: int = 0
    seconds: float = 0.0

    def fit(self, seconds: float, batch_size: int, rng: np.random.Generator) -> None:
        import torch

        self.policy.train()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            batch = self.norm.batch(self.train.take(rng.choice(len(self.train), batch_size, replace=False)))
            loss, _ = self.policy.forward(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 10.0)  # lerobot's default grad_clip_norm
            self.optimizer.step()
            self.steps += 1
            self.seconds += time.perf_counter() - t0

    def val_l1(self) -> float:
        """Mean L1 of the predicted chunks on the validation demonstrations (normalised units, padding masked)."""
        import torch

        self.policy.eval()
        total, count = 0.0, 0.0
        with torch.inference_mode():
            for s in range(0, len(self.val), 64):
                b = self.norm.batch(self.val.take(np.arange(s, min(s + 64, len(self.val)))))
                pred = self.policy.predict_action_chunk(b)
                keep = ~b["action_is_pad"]
                total += float((pred - b["action"]).abs().mean(-1)[keep].sum())
                count += float(keep.sum())
        return total / max(count, 1.0)


class ACTController:
    """ACT in the simulator's closed loop: each frame -> ``select_action`` -> an EE target and the gripper."""

    needs_images = True

    def __init__(self, policy: Any, norm: Normalizer, ensemble: bool) -> None:
        self.policy, self.norm = policy, norm
        self.policy.config.temporal_ensemble_coeff = ENSEMBLE_COEFF if ensemble else None
        self.policy.config.n_action_steps = 1 if ensemble else self.policy.config.chunk_size
        if ensemble:
            from lerobot.policies.act.modeling_act import ACTTemporalEnsembler

            self.policy.temporal_ensembler = ACTTemporalEnsembler(ENSEMBLE_COEFF, self.policy.config.chunk_size)
        self.policy.eval()

    def reset(self) -> None:
        self.policy.reset()

    def command(self, frame: Any) -> Any:
        import torch

        from sim_tests.fetch_env import ArmCommand

        state = np.concatenate([frame.position, frame.quaternion, [frame.gripper]]).astype(np.float32)[None]
        images = {c: np.ascontiguousarray(frame.images[c].transpose(2, 0, 1))[None] for c in self.norm.images}
        obs = self.norm.batch(ActData(images, state, np.zeros((1, 1, 4), np.float32), np.zeros((1, 1), bool)))
        del obs["action"], obs["action_is_pad"]
        with torch.inference_mode():
            a = self.norm.unnormalize_action(self.policy.select_action(obs))[0]
        return ArmCommand(target_position=a[:3].astype(np.float64), gripper=float(np.clip(a[3], 0.0, 1.0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", required=True, help="configs/sim/recipes/<name>.yaml (or a path): task, cameras, size, demonstrations")
    ap.add_argument("--minutes", type=float, default=30.0, help="training wall minutes in all, the sweep included (at --threads)")
    ap.add_argument("--sweep-minutes", type=float, default=5.0, help="minutes each (lr, chunk) pair trains before the best one continues")
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-5, 1e-4], help="learning rates to sweep (ACT's default: 1e-5)")
    ap.add_argument("--chunk", type=int, nargs="+", default=[20], help="chunk sizes to sweep (ACT's default 100 exceeds these episodes)")
    ap.add_argument("--batch-size", type=int, default=8, help="lerobot's default")
    ap.add_argument("--episodes", type=int, default=None, help="closed-loop episodes (default: the recipe's)")
    ap.add_argument("--out", default="outputs/peer_act", help="the recipe's demonstrations go to <out>/<task>/demos (reused if there)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    lerobot_env.reexec_with_act()

    import torch

    import sim_tests  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
    from sim_tests.closed_loop import evaluate_random, run_episodes
    from sim_tests.demo import load_recipe, record_recipe

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    recipe = load_recipe(args.recipe)
    root = Path(args.out) / recipe.task
    cfg, bags, record_s = record_recipe(recipe, root)
    episodes = args.episodes or recipe.eval_episodes
    runs = []
    for chunk in args.chunk:
        data, val_start = act_data(cfg, bags, chunk)
        train, val = data.take(np.arange(val_start)), data.take(np.arange(val_start, len(data)))
        norm = Normalizer(train)
        for lr in args.lr:
            policy, optimizer = make_act(train, chunk, lr)
            run = Run(lr, chunk, policy, optimizer, norm, train, val)
            if len(args.lr) * len(args.chunk) > 1:
                run.fit(args.sweep_minutes * 60, args.batch_size, rng)
            run_l1 = run.val_l1()
            print(f"sweep: lr {lr:g}, chunk {chunk}: {run.steps} steps in {run.seconds / 60:.1f} min, validation L1 {run_l1:.4f}", flush=True)
            runs.append((run_l1, run))
    best = min(runs, key=lambda r: r[0])[1]
    spent = sum(r.seconds for _, r in runs)
    best.fit(max(0.0, args.minutes * 60 - spent), args.batch_size, rng)
    cpu_min = (sum(r.seconds for _, r in runs) * args.threads) / 60
    print(f"ACT: lr {best.lr:g}, chunk {best.chunk}: {best.steps} steps, validation L1 {best.val_l1():.4f}; "
          f"{cpu_min:.1f} CPU minutes in all ({args.threads} threads)", flush=True)
    rows = {}
    for ensemble in (False, True):
        name = "act_ensemble" if ensemble else "act"
        report = run_episodes(cfg, lambda sim: ACTController(best.policy, best.norm, ensemble), episodes, EVAL_SEED, root / name, 3, name, True)
        rows[name] = report
        print(report.table().splitlines()[-1], flush=True)
    rand = evaluate_random(cfg, episodes, EVAL_SEED)
    result = {"recipe": args.recipe, "task": recipe.task, "demos": len(bags), "image_size": cfg.image_size, "cameras": list(cfg.cameras),
              "lr": best.lr, "chunk": best.chunk, "steps": best.steps, "cpu_minutes": cpu_min, "threads": args.threads,
              "sweep": [{"lr": r.lr, "chunk": r.chunk, "val_l1": v} for v, r in runs], "record_s": record_s,
              **{k: r.summary() for k, r in rows.items()}, "random": rand.summary()}
    (root / "act.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{'task':<22} {'demos':>5} {'lr':>7} {'chunk':>5} {'steps':>6} {'CPU min':>7}  {'ACT [Wilson 95%]':<22} {'ACT + ensembling':<22} random")
    fmt = lambda r: f"{r.success_rate:.0%} [{r.wilson95[0]:.0%}, {r.wilson95[1]:.0%}]"  # noqa: E731
    print(f"{recipe.task:<22} {len(bags):>5} {best.lr:>7g} {best.chunk:>5} {best.steps:>6} {cpu_min:>7.1f}  {fmt(rows['act']):<22} "
          f"{fmt(rows['act_ensemble']):<22} {rand.success_rate:.0%}")
    print(f"\nevaluation seeds from {EVAL_SEED} (benchmarks/sim_success.py's), torch threads {args.threads}; -> {root / 'act.json'}")


if __name__ == "__main__":
    main()
