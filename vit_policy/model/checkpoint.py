"""Checkpoint I/O and the policy builder: everything that reads or writes a file for the model.

The model module (:mod:`vit_policy.model.policy`) only builds and computes; this module

* builds a policy with the pretrained parts its config names (:func:`build_policy`): local encoder
  weights (``encoder.weights``), the point head and its point statistics from a pretraining file
  (``vit_policy.pretrain``), local text-tower weights (``language.weights``);
* writes a checkpoint directory (:func:`save_checkpoint`): ``config.yaml``, ``model.safetensors``
  (tensors that share memory stored once), ``stats.safetensors`` (normalisation statistics),
  ``metadata.json`` (with the policy's :class:`ObservationSpec`) and, when fitted with these weights, ``ood.safetensors`` (:mod:`vit_policy.ood`);
* loads one (:func:`load_checkpoint`): validates the files, builds the model from its config without
  reading the original pretrained files again, restores weights, statistics and the OOD monitor. Nothing
  is unpickled; a missing, truncated or corrupt file is an error naming the path, the cause and the fix.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vit_policy.config import ConfigError, from_dict, read_yaml, save_config
from vit_policy.geometry import NormStats
from vit_policy.model.configuration import PolicyConfig, load_policy_config
from vit_policy.model.encoders import (
    POINT_HEAD, WeightsError, load_encoder_weights, load_instruction_weights, load_matching, read_state_dict, weights_error,
)
from vit_policy.model.policy import VisuomotorPolicy
from vit_policy.observation import ObservationSpec
from vit_policy.ood import OOD_FILE, OODMonitor

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE, STATS_FILE, METADATA_FILE = "config.yaml", "model.safetensors", "stats.safetensors", "metadata.json"
# what `vit-policy export` derives from the weights (vit_policy.deploy): stale once new weights are saved
ONNX_FILE, ONNX_INT8_FILE, EXPORT_REPORT = "policy.onnx", "policy.int8.onnx", "export.json"


# --------------------------------------------------------------------------------------------------
# Building with pretrained parts
# --------------------------------------------------------------------------------------------------


def build_policy(cfg: PolicyConfig | dict[str, Any] | str | Path) -> VisuomotorPolicy:
    """A policy from a PolicyConfig, a mapping or a YAML path (validated), with the pretrained parts its config names."""
    if isinstance(cfg, (str, Path)):
        cfg = load_policy_config(cfg)
    elif isinstance(cfg, dict):
        cfg = from_dict(PolicyConfig, cfg)
    policy = VisuomotorPolicy(cfg)
    load_pretrained_parts(policy)
    return policy


def load_pretrained_parts(policy: VisuomotorPolicy) -> None:
    """Load what ``policy.cfg`` names from local files: encoder weights, the point head and its statistics, text-tower weights.

    The point head and its statistics come from ``encoder.weights`` (a ``vit_policy.pretrain`` file);
    without that file they stay random / placeholders (a checkpoint fills them).
    """
    cfg = policy.cfg
    path = cfg.encoder.weights
    if path:
        for encoder in policy.encoders.values():
            load_encoder_weights(encoder, path)  # type: ignore[arg-type]
        if policy.point_head is not None:
            load_point_head(policy, path)
        if cfg.points is not None and cfg.points.frame == "ee":
            _, policy.point_mean, policy.point_std = read_point_stats(path, "points.frame: ee", "or set points.frame: base")
    if policy.language is not None and cfg.language.weights:
        load_instruction_weights(policy.language, cfg.language.weights)


def load_point_head(policy: VisuomotorPolicy, path: str | Path) -> None:
    """The pretrained point head of a pretraining file into ``policy.point_head``; its cameras must be the policy's, in order."""
    cfg = policy.cfg
    assert cfg.points is not None
    state = {k.removeprefix(POINT_HEAD): v for k, v in read_state_dict(path).items() if k.startswith(POINT_HEAD)}
    if not state:
        raise WeightsError(f"points.count: {cfg.points.count}, but {str(path)!r} has no point head ({POINT_HEAD}* keys); "
                           "pretrain one with vit_policy.pretrain (vit-policy sim-pretrain) or set points: null")
    meta = safetensors_metadata(path)
    if "cameras" in meta and json.loads(meta["cameras"]) != list(cfg.cameras):
        raise ConfigError(f"cameras: {cfg.cameras}, but the point head of {str(path)!r} was pretrained on "
                          f"{json.loads(meta['cameras'])} in that order; list the cameras so")
    assert policy.point_head is not None
    load_matching(policy.point_head, state, f"{path} ({POINT_HEAD}*)")


def read_point_stats(path: str | Path, needed_by: str, fix: str = "") -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """A pretraining file's point names and their (points, 3) mean and std in metres (vit_policy.pretrain
    stores them as metadata: the point head's outputs are normalised by them)."""
    meta = safetensors_metadata(path)
    if not {"points", "point_mean_m", "point_std_m"} <= set(meta):
        raise WeightsError(f"{needed_by} needs the point statistics (point_mean_m, point_std_m) that vit_policy.pretrain "
                           f"stores, and {str(path)!r} has none; pretrain it again {fix}".rstrip())
    names = json.loads(meta["points"])
    mean, std = (torch.tensor(json.loads(meta[k]), dtype=torch.float32) for k in ("point_mean_m", "point_std_m"))
    if mean.shape != (len(names), 3) or std.shape != (len(names), 3):
        raise WeightsError(f"{str(path)!r}: point_mean_m / point_std_m should be {len(names)} x 3 (one per point), got "
                           f"{tuple(mean.shape)} / {tuple(std.shape)}; pretrain it again")
    return names, mean, std


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a .safetensors file ({} for other formats)."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    if not Path(path).is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # truncated or corrupt: the path, the cause and the fix
        raise weights_error(path, exc) from exc


# --------------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------------


def save_checkpoint(policy: VisuomotorPolicy, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write config.yaml, model.safetensors and stats.safetensors (+ metadata.json, + ood.safetensors) into a directory."""
    from safetensors.torch import save_file

    policy._require_stats()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_config(policy.cfg, directory / CONFIG_FILE)
    state = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    save_file(_dedupe_shared(state), str(directory / WEIGHTS_FILE))
    for name in (ONNX_FILE, ONNX_INT8_FILE, EXPORT_REPORT):  # an export of the old weights must not run as this checkpoint
        if (directory / name).is_file():
            (directory / name).unlink()
            log.info("%s: removed %s, exported from the weights this save replaces; export again (vit-policy export)", directory, name)
    tensors: dict[str, torch.Tensor] = {}
    for key, st in (policy.stats or {}).items():
        tensors.update(st.to_tensors(key))
    save_file(tensors, str(directory / STATS_FILE))
    save_ood(policy, directory)
    metadata = {**(metadata or {}), "observation": policy.spec.to_dict()}
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))
    return directory


def save_ood(policy: VisuomotorPolicy, directory: str | Path) -> None:
    """Write the OOD statistics when they were fitted with these weights; never leave stale ones beside new weights."""
    path = Path(directory) / OOD_FILE
    if policy.ood is not None and policy.ood.fitted_with(policy):
        policy.ood.save(path)
        return
    if policy.ood is not None:
        log.warning("OOD statistics not saved: the encoder weights changed since they were fitted (vit-policy fit-ood fits them again)")
    path.unlink(missing_ok=True)


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory; keep one copy of each (the first name)."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if v.numel() and key in seen:
            continue
        seen[key] = k
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------


def checkpoint_fix(directory: str | Path) -> str:
    """How to get a good checkpoint directory back: the end of every load error."""
    return (f"copy the checkpoint directory {str(directory)!r} again from where it was trained (a copy was cut short), "
            "or export it again (save_checkpoint; vit-policy train writes last/ and best/)")


def run_folder(directory: str | Path) -> str | None:
    """The error for a training run's folder given where its best/ or last/ belongs (the usual wrong checkpoint), else None."""
    directory = Path(directory)
    inside = [d for d in ("best", "last") if (directory / d / CONFIG_FILE).is_file()]
    if not inside or (directory / CONFIG_FILE).is_file():
        return None
    return f"checkpoint {str(directory)!r} is a training run's folder, not a checkpoint: pass {' or '.join(str(directory / d) for d in inside)}"


def incomplete(directory: str | Path, missing: list[str]) -> str:
    """The error for a checkpoint directory without the files ``missing``."""
    verb = "is" if len(missing) == 1 else "are"
    return run_folder(directory) or f"checkpoint {str(directory)!r} is incomplete: {', '.join(missing)} {verb} missing"


def read_policy_config(directory: str | Path, fix: str) -> PolicyConfig:
    """The config.yaml of a checkpoint or export directory (its errors name the file and ``fix``)."""
    path = Path(directory) / CONFIG_FILE
    try:
        raw = read_yaml(path)
    except ConfigError as exc:  # its errors name the file
        raise ConfigError(f"{exc}; {fix}") from None
    try:
        return from_dict(PolicyConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{str(path)!r}: {exc}; {fix}") from None


def read_stats(directory: str | Path, fix: str) -> dict[str, NormStats]:
    """The normalisation statistics of a checkpoint directory ('state', 'action'); a file that cannot be read
    raises WeightsError naming it and ``fix``, one without the statistics KeyError."""
    from safetensors.torch import load_file

    src = str(Path(directory) / STATS_FILE)
    try:
        raw = load_file(src)
    except Exception as exc:  # truncated or corrupt: the path, the cause and the fix
        raise weights_error(src, exc, fix) from exc
    return {k: NormStats.from_tensors(raw, k, src) for k in ("state", "action")}


def read_spec(directory: str | Path, cfg: PolicyConfig, fix: str) -> ObservationSpec:
    """The observation spec in a checkpoint's metadata.json; for one saved before the spec existed, the config's
    (frame and gripper range from its recorded data config when it has one, else unknown)."""
    path = Path(directory) / METADATA_FILE
    meta: dict[str, Any] = {}
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{str(path)!r} cannot be read ({exc}); {fix}") from None
    if isinstance(meta.get("observation"), dict):
        spec = ObservationSpec.from_dict(meta["observation"], str(path))
        try:
            spec.matches_config(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{str(path)!r}: {exc}; {fix}") from None
        return spec
    if isinstance(meta.get("data"), dict):
        from vit_policy.data.configuration import DataConfig

        try:
            return ObservationSpec.of(cfg, from_dict(DataConfig, meta["data"], "data"))
        except ConfigError:
            pass  # a data config this version cannot read: frame and gripper stay unknown
    return ObservationSpec.of(cfg)


def load_ood(directory: str | Path, policy: VisuomotorPolicy) -> OODMonitor | None:
    """The OOD monitor of a checkpoint directory, checked against ``policy``; None when it has no statistics."""
    path = Path(directory) / OOD_FILE
    if not path.is_file():
        return None
    monitor = OODMonitor.load(path)
    monitor.check(policy, str(path))
    return monitor


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu", ood: bool = True) -> VisuomotorPolicy:
    """Load a checkpoint directory written by :func:`save_checkpoint`, in eval mode; nothing is unpickled.

    The weights come from the checkpoint: the encoder's original hub or local weights are never read
    again. Its OOD statistics (``ood.safetensors``, when present and ``ood``) become ``policy.ood``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist")
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE) if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(incomplete(directory, missing))
    fix = checkpoint_fix(directory)
    cfg = read_policy_config(directory, fix)
    cfg.encoder.pretrained, cfg.encoder.weights = False, None
    cfg.language.pretrained, cfg.language.weights = None, None
    model = VisuomotorPolicy(cfg)
    state = read_state_dict(directory / WEIGHTS_FILE, fix)
    missing, unexpected = model.load_state_dict(_restore_shared(state, model), strict=False)
    if missing or unexpected:
        raise WeightsError(f"checkpoint {str(directory / WEIGHTS_FILE)!r} does not match its config: missing {missing[:8]}, "
                           f"unexpected {unexpected[:8]}; {CONFIG_FILE} and {WEIGHTS_FILE} must come from the same save: {fix}")
    try:
        model.set_stats(read_stats(directory, fix))
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"checkpoint statistics {str(directory / STATS_FILE)!r} do not fit the model: "
                           f"{exc.args[0] if exc.args else exc}; {fix}") from None
    model.ood = load_ood(directory, model) if ood else None
    model.spec = read_spec(directory, model.cfg, fix)
    return model.to(map_location).eval()


def _restore_shared(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Fill keys dropped by ``_dedupe_shared`` from the tensor they shared memory with."""
    own = model.state_dict()
    by_ptr: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for k, v in own.items():
        by_ptr.setdefault((v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)), []).append(k)
    out = dict(state)
    for names in by_ptr.values():
        have = [n for n in names if n in state]
        for n in names:
            if n not in out and have:
                out[n] = state[have[0]]
    return out
