"""The ``vit-policy`` command: the core's subcommands, plus those other packages register.

Each subcommand is an ``add_<name>`` function that adds its parser and a ``cmd_<name>`` function that
turns the parsed arguments into typed calls of the library and prints the result; library modules never
see the ``argparse.Namespace``. A command imports its modules lazily, so ``vit-policy --help`` stays fast.
The CLI imports nothing above the core: ``serve`` (ros_nodes) and the simulator's commands (sim_tests)
come in through the entry point group ``vit_policy.commands`` (setup.py), each a function that adds its
subparsers.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np


def set_threads(threads: int | None) -> None:
    """torch CPU threads, when given (None or 0: torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# demo: the default policy on a generated observation
# --------------------------------------------------------------------------------------------------


def cmd_policy_demo(args: argparse.Namespace) -> int:
    """Build a policy from configs/, run it on a generated observation, print the chunk and latency."""
    import torch

    from vit_policy.config import default_config
    from vit_policy.model.configuration import load_policy_config
    from vit_policy.model.policy import VisuomotorPolicy, count_parameters, identity_stats
    from vit_policy.observation import example_observation

    torch.set_num_threads(args.threads)
    path = Path(args.config) if args.config else default_config("policy/vit_small.yaml")
    cfg = load_policy_config(path, args.overrides)
    policy = VisuomotorPolicy.from_config(cfg).eval()
    policy.set_stats(identity_stats(cfg))  # untrained: statistics that change nothing
    h, w = policy.image_size
    obs = example_observation(cfg.cameras, (h, w), cfg.pose.history, stamp_ns=time.time_ns())
    print(f"policy: {path.name}  encoder {cfg.encoder.family}:{cfg.encoder.name} @ {h}x{w}, cameras {cfg.cameras}, "
          f"K={cfg.chunk_size}, dt={cfg.control_dt}s, {count_parameters(policy) / 1e6:.1f} M parameters (untrained weights)")
    policy.predict(obs)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        chunk = policy.predict(obs)
        times.append((time.perf_counter() - t0) * 1e3)
    print(f"{'step':>4} {'t+ms':>6} {'dx mm':>8} {'dy mm':>8} {'dz mm':>8} {'drot deg':>9} {'gripper':>8}")
    for k in range(len(chunk)):
        dp = chunk.delta_position[k] * 1e3
        print(f"{k:>4} {(k + 1) * chunk.dt_ns / 1e6:>6.0f} {dp[0]:>8.2f} {dp[1]:>8.2f} {dp[2]:>8.2f} "
              f"{np.degrees(np.linalg.norm(chunk.delta_rotation[k])):>9.2f} {chunk.gripper[k]:>8.3f}")
    print(f"latency over {args.repeats} steps, {args.threads} threads: p50 {np.percentile(times, 50):.1f} ms, "
          f"p90 {np.percentile(times, 90):.1f} ms")
    return 0


def add_policy_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy-demo", help="run the default (untrained) policy on a generated observation")
    p.add_argument("--config", help="policy YAML (default: configs/policy/vit_small.yaml)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. chunk_size=10")
    p.set_defaults(func=cmd_policy_demo)


# --------------------------------------------------------------------------------------------------
# train: rosbag2 demonstrations -> checkpoint (vit_policy/train.py)
# --------------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """Check every bag and dataset of the config (each failure with its fix), train, print where the checkpoints are."""
    import torch.distributed as dist

    from vit_policy.train import load_train_config
    from vit_policy.data.inspect import check_bags
    from vit_policy.data.lerobot import check_dataset, is_dataset
    from vit_policy.train import expand_bags, train

    cfg = load_train_config(args.config, args.overrides)
    paths = expand_bags(cfg.bags) + expand_bags(cfg.val_bags, "val_bags")
    check_bags([p for p in paths if not is_dataset(p)], cfg.data)  # a bad bag fails now, with its fix
    for p in filter(is_dataset, paths):
        check_dataset(p, cfg.data)  # a LeRobot dataset without an EE pose or a mapped camera fails now
    set_threads(args.threads)
    result = train(cfg)
    if result.last is not None:
        final = result.history[-1] if result.history else {}
        print(f"trained {result.step} steps; last checkpoint {result.last}, best {result.best}")
        if "val/loss" in final:
            print(f"validation loss {final['val/loss']:.4f} (mean-action predictor {final.get('val/baseline_loss', float('nan')):.4f})")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a policy on rosbag2 demonstrations or LeRobotDataset v3 directories (under torchrun for several processes)")
    p.add_argument("--config", required=True, help="training YAML, e.g. configs/train/sim_fetch.yaml")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=5 policy.chunk_size=10")
    p.set_defaults(func=cmd_train)


# --------------------------------------------------------------------------------------------------
# pretrain: the encoder on the training bags' own frames, labelled in hindsight (vit_policy/pretrain.py)
# --------------------------------------------------------------------------------------------------


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain the config's encoder on its bags' frames labelled in hindsight; print the errors and how to train on it."""
    from tqdm.auto import tqdm

    from vit_policy.pretrain import pretrain_on_demonstrations
    from vit_policy.train import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    set_threads(args.threads)
    with tqdm(total=args.steps, desc="pretrain encoder", unit="step", dynamic_ncols=True) as bar:
        res = pretrain_on_demonstrations(cfg, args.points, args.out, args.steps, args.batch_size, cfg.seed, lambda *_: bar.update(1),
                                         shift_px=args.shift_px)
    print(res.table())
    kept = " ".join(shlex.quote(o) for o in args.overrides)  # the bags and settings it was pretrained with
    print(f"train on it: vit-policy train --config {args.config} {kept + ' ' if kept else ''}policy.encoder.weights={res.path} "
          f"policy.points.count={len(args.points)} policy.encoder.freeze=all policy.encoder.token_mode=patches")
    return 0


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    from vit_policy.pretrain import HINDSIGHT_POINTS

    p = sub.add_parser("pretrain", help="pretrain the encoder on the training bags' frames, labelled in hindsight from the recorded "
                                        "EE poses and gripper (no annotation): where the EE is, where each demonstration ended, ...")
    p.add_argument("--config", required=True, help="training YAML: its bags, data: and policy.encoder")
    p.add_argument("--points", nargs="+", default=["ee", "end"], choices=HINDSIGHT_POINTS,
                   help="ee: the observed EE; end: where the demonstration ended (a reach / place goal); grasp: where the gripper "
                        "first closed (the object); object: the grasp point until the gripper closes, then the EE that carries it; "
                        "low: where the EE first came down to its lowest (a push's start); contact: the low point until the EE "
                        "gets there, then the EE while it pushes; pushed: the contact point moved toward end by the last pushing "
                        "pose's gap to end (the pushed object's centre)")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps (default 2000)")
    p.add_argument("--shift-px", type=int, default=0, metavar="PX",
                   help="shift each training image by up to PX pixels (random crop), against learning scenes by heart (default 0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="the .safetensors file to write (backbone + point head)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("overrides", nargs="*", help="training config key=value overrides, e.g. policy.encoder.img_size=96")
    p.set_defaults(func=cmd_pretrain)


# --------------------------------------------------------------------------------------------------
# replay: offline evaluation of checkpoints on recorded bags (vit_policy/replay/)
# --------------------------------------------------------------------------------------------------


def add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="evaluate checkpoints on recorded rosbag2 bags: metrics.json + report.html")
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="DIR", help="checkpoint directories (several: compared side by side)")
    p.add_argument("--bags", nargs="+", required=True, metavar="PATH", help="rosbag2 recordings (held-out demonstrations)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for metrics.json, report.html and plots/")
    p.add_argument("--mode", choices=["faithful", "batch", "both"], default="both",
                   help="faithful: through PolicyRunner on bag time, as the node; batch: batched inference (default both)")
    p.add_argument("--latency-ms", type=float, default=None,
                   help="inference latency of the replayed node (default: measured on this machine)")
    p.add_argument("--data-config", metavar="YAML", help="train config (its data: section) or data YAML with the bag's topics "
                   "(default: the checkpoint's metadata.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="replay config override, e.g. runtime.strategy=receding or tolerance_mm=5 (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay the checkpoints on the bags, print the metrics table, write metrics.json and report.html."""
    from vit_policy.config import ConfigError
    from vit_policy.data.bags import drop_non_bags
    from vit_policy.replay import load_replay_config, replay_checkpoints
    from vit_policy.report import metric_columns, metrics_table_text

    overrides = list(args.set)
    if args.mode != "both":
        overrides.append(f"modes=[{args.mode}]")
    if args.latency_ms is not None:
        if args.latency_ms < 0:
            raise ConfigError(f"--latency-ms: {args.latency_ms} must be >= 0 milliseconds")
        overrides.append(f"runtime.inference_latency_s={args.latency_ms / 1e3}")
    set_threads(args.threads)
    cfg = load_replay_config(args.data_config, args.checkpoint, overrides)
    results = replay_checkpoints(args.checkpoint, drop_non_bags(args.bags), args.out, cfg)  # checks every checkpoint and bag first
    print(metrics_table_text(metric_columns(results)))
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'report.html'}")
    return 0


# --------------------------------------------------------------------------------------------------
# inspect: what a bag holds and whether it would extract (vit_policy/data/inspect.py)
# --------------------------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print each bag's report (or one JSON document); exit 0 if every bag would extract, else 2."""
    import json

    from vit_policy.data.bags import drop_non_bags
    from vit_policy.data.inspect import format_reports, inspect_bags, load_data_config

    doc = inspect_bags(drop_non_bags(args.bags), load_data_config(args.data_config, args.set))
    print(json.dumps(doc, indent=2) if args.json else format_reports(doc))
    return 0 if doc["ok"] else 2


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="per bag: topics, counts, rates, gaps, stamp lag, pose coverage and whether it would extract "
                       "(exit 0 if every bag would, else 2)")
    p.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 recordings (directories or .db3/.mcap files)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of the tables")
    p.add_argument("--data-config", metavar="YAML", help="train config (its data: section) or data YAML with the bag's topics "
                   "(default: the DataConfig defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="data config override, e.g. data.pose_topic=/ee_pose or sync_tolerance_s=0.1 (repeatable)")
    p.set_defaults(func=cmd_inspect)


# --------------------------------------------------------------------------------------------------
# export-dataset: rosbag2 -> LeRobotDataset v3 (vit_policy/data/lerobot.py)
# --------------------------------------------------------------------------------------------------


def cmd_export_dataset(args: argparse.Namespace) -> int:
    """Export the bags (globs expanded) as one LeRobotDataset v3 directory; print what was written."""
    from vit_policy.data.inspect import load_data_config
    from vit_policy.data.lerobot import export_dataset, format_export
    from vit_policy.train import expand_bags

    data = load_data_config(args.data_config, args.set)
    res = export_dataset(expand_bags(args.bags), data, args.out, args.fps, args.video, args.task, args.robot_type, args.vcodec,
                         args.crf, progress=not args.no_progress)
    print(format_export(res))
    return 0


def add_export_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-dataset", help="rosbag2 recordings -> a LeRobotDataset v3 directory, through the training extraction "
                       "(inspect's checks first)")
    p.add_argument("--bags", nargs="+", required=True, metavar="PATH", help="rosbag2 recordings (directories, .db3/.mcap files or globs)")
    p.add_argument("--data-config", metavar="YAML", help="train config (its data: section) or data YAML with the bags' topics")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="data config override, e.g. labels=command (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="new dataset directory")
    p.add_argument("--fps", type=int, default=None, help="frames per second and action period (default: data.control_rate_hz)")
    p.add_argument("--video", action="store_true", help="one video per camera (lossy) instead of PNG frames in the parquet (lossless)")
    p.add_argument("--vcodec", choices=["h264", "av1"], default="h264", help="video codec with --video (default h264)")
    p.add_argument("--crf", type=int, default=18, help="video quality with --video: lower is better and larger (default 18)")
    p.add_argument("--task", default="demonstration", help="the episodes' task description (meta/tasks.parquet)")
    p.add_argument("--robot-type", default=None, help="info.json robot_type")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export_dataset)


# --------------------------------------------------------------------------------------------------
# fit-ood: the out-of-distribution monitor of existing checkpoints (vit_policy/ood.py)
# --------------------------------------------------------------------------------------------------


def cmd_fit_ood(args: argparse.Namespace) -> int:
    """Fit each checkpoint's OOD monitor; print its thresholds and self-check as each one is written."""
    from vit_policy.ood import refit_checkpoints

    set_threads(args.threads)
    for report in refit_checkpoints(args.checkpoint, args.bags, args.val_bags or [], args.val_fraction, args.quantile, args.seed,
                                    args.batch_size, args.data_config, args.set):
        print(report.format())
    return 0


def add_fit_ood(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-ood", help="fit the out-of-distribution monitor of existing checkpoints on bags (writes ood.safetensors)")
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="DIR", help="checkpoint directories")
    p.add_argument("--bags", nargs="+", required=True, metavar="PATH", help="rosbag2 recordings the policy was trained on (or globs)")
    p.add_argument("--val-bags", nargs="+", metavar="PATH", help="held-out recordings for the threshold (default: --val-fraction of --bags)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="episodes of --bags set aside for the threshold (default 0.2)")
    p.add_argument("--quantile", type=float, default=None, help="threshold = this quantile of the validation scores (default 0.99)")
    p.add_argument("--seed", type=int, default=0, help="seed of the episode split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-config", metavar="YAML", help="train config (its data: section) or data YAML with the bag's topics "
                   "(default: the checkpoint's metadata.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="data config override, e.g. data.pose_topic=/ee_pose")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_fit_ood)


# --------------------------------------------------------------------------------------------------
# export: the policy step as ONNX (fp32 / int8) for runtime.backend: onnxruntime (vit_policy/deploy.py)
# --------------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    """Export the checkpoint as ONNX, print the check against torch and what was written."""
    from vit_policy.deploy import EXPORT_REPORT, ONNX_FILE, ONNX_INT8_FILE, export_policy, format_report

    set_threads(args.threads)
    report = export_policy(args.checkpoint, args.out, args.bags, args.int8, args.data_config, args.frames)
    print(format_report(report))
    int8 = "int8" in report
    print(f"wrote {Path(args.out or args.checkpoint)}: {ONNX_FILE}" + (f", {ONNX_INT8_FILE}" if int8 else "")
          + f", {EXPORT_REPORT}; run it with runtime.backend=onnxruntime" + (f" (runtime.onnx_file={ONNX_INT8_FILE} for int8)" if int8 else ""))
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint as an ONNX graph (fp32, --int8 too) for runtime.backend: onnxruntime, "
                       "checked against torch on held-out frames")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="trained checkpoint directory")
    p.add_argument("--bags", nargs="+", required=True, metavar="PATH", help="held-out rosbag2 recordings: the frames the export is checked on")
    p.add_argument("--out", metavar="DIR", help="output directory (default: the checkpoint directory itself)")
    p.add_argument("--int8", action="store_true", help="also write policy.int8.onnx (dynamic int8; kept only within 1 mm / 0.5 deg of torch)")
    p.add_argument("--data-config", metavar="YAML", help="train config (its data: section) or data YAML with the bags' topics "
                   "(default: the checkpoint's metadata.json)")
    p.add_argument("--frames", type=int, default=64, help="frames checked, spread evenly over the bags (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_export)


# --------------------------------------------------------------------------------------------------
# Registration: the core's subcommands here, the other packages' through entry points
# --------------------------------------------------------------------------------------------------

REGISTER = [add_policy_demo, add_train, add_pretrain, add_replay, add_inspect, add_export_dataset, add_fit_ood, add_export]
COMMANDS_GROUP = "vit_policy.commands"


def registered() -> list:
    """Functions that add subparsers: the core's, then each installed package's (entry points, by name)."""
    plugins = sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name)
    return [*REGISTER, *(e.load() for e in plugins)]


DEBUG_HELP = "on an error, show the Python traceback instead of the one-line message (before or after the subcommand)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit-policy", description=__doc__.splitlines()[0],
        epilog="An error in the input (a config, a checkpoint or weights file, a bag) prints one line, "
               "'error: <path>: <cause>; <fix>', and exits with 2; --debug shows the traceback instead.")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for register in registered():
        register(sub)
    for p in sub.choices.values():  # also accepted after the subcommand; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


# The project's errors about its input: each message names the path or key, the cause and the fix.
USER_ERRORS = {
    "vit_policy.config.ConfigError", "vit_policy.data.bags.BagError", "vit_policy.model.encoders.WeightsError",
    "vit_policy.messages.MessageError", "vit_policy.images.ImageEncodingError", "vit_policy.geometry.PoseError",
    "vit_policy.observation.ObservationError", "vit_policy.data.lerobot.DatasetError",
}
# Paths given on the command line (a missing bag or checkpoint, an output that exists, a file where a directory belongs)
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
PROJECT_DIRS = tuple(Path(__file__).resolve().parent.parent / d for d in ("vit_policy", "ros_nodes", "sim_tests"))


def is_user_error(exc: BaseException) -> bool:
    """An error in what the user gave (one line, exit 2), not a bug (traceback, exit 1).

    A plain ValueError counts when the project's own code raised it (its argument and data checks);
    one raised inside numpy, torch or another library is a bug.
    """
    if any(f"{c.__module__}.{c.__qualname__}" in USER_ERRORS for c in type(exc).__mro__) or isinstance(exc, USER_OS_ERRORS):
        return True
    if type(exc) is not ValueError or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return any(d in Path(tb.tb_frame.f_code.co_filename).resolve().parents for d in PROJECT_DIRS)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; KEY=VALUE overrides may come before or after options (``train --config X --threads 1 a=1``).

    argparse stops a ``nargs="*"`` positional at the first option, and its intermixed parsing does not take
    subcommands: the KEY=VALUE words left over are appended to the command's overrides here."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    field = next((f for f in ("overrides", "policy_overrides") if isinstance(getattr(args, f, None), list)), None)
    if extra and (field is None or any(e.startswith("-") or "=" not in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        setattr(args, field, [*getattr(args, field), *extra])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if args.debug or not is_user_error(exc):
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever a library wrote
        return 2


if __name__ == "__main__":
    sys.exit(main())
