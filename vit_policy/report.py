"""The replay report: matplotlib (Agg) PNG plots and one self-contained ``report.html``.

Every plot is written to ``<out>/plots/*.png`` and embedded in the HTML as a base64 data URI wrapped
in a link to the file, so the page opens anywhere (mailed, attached to a ticket) and each figure can
still be opened at full size. Several checkpoints evaluated on the same bags share one page: a metrics
table with one column per checkpoint, overlaid curves, and a section per checkpoint.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # only for type hints: replay imports this module
    from vit_policy.replay.evaluation import CheckpointResult
    from vit_policy.replay.modes import BagResult

AXES = ("x", "y", "z")


def _pyplot():  # type: ignore[no-untyped-def]
    """matplotlib with the Agg backend (no display), imported lazily."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def plot_trajectory(result: "BagResult", title: str, path: Path) -> Path:
    """Recorded EE position, the recorded target one step ahead and the policy's, per axis over time."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 6.5), sharex=True)
    t0 = result.t0_ns
    pred = result.predictions
    tgt_t = (pred.stamps_ns + pred.dt_ns - t0) / 1e9
    true_next = pred.origin_position + pred.true_dp[:, 0]
    pred_next = pred.origin_position + pred.pred_dp[:, 0]
    for i, ax in enumerate(axes):
        for e, ep in enumerate(result.recorded):
            ax.plot((ep.stamps_ns - t0) / 1e9, ep.position[:, i] * 1e3, color="0.6", lw=2.5,
                    label="recorded EE pose" if e == 0 else None)
        ax.plot(tgt_t, true_next[:, i] * 1e3, ".", color="tab:green", ms=4, label="recorded target (step 1)")
        ax.plot(tgt_t, pred_next[:, i] * 1e3, ".", color="tab:red", ms=4, label=f"predicted target (step 1, {result.mode})")
        if result.commands is not None and len(result.commands.stamps_ns):
            c = result.commands
            ok = ~c.is_stop
            ax.plot((c.stamps_ns[ok] + pred.dt_ns - t0) / 1e9, c.target_position[ok, i] * 1e3, "-", color="tab:blue",
                    lw=1, label="executed command target (tick + period)")
        ax.set_ylabel(f"{AXES[i]} (mm)")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("bag time (s)")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_path3d(results: list[tuple[str, "BagResult"]], title: str, path: Path) -> Path:
    """3D path of the recorded EE pose and of each checkpoint's step-1 targets (or executed commands)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot(projection="3d")
    first = results[0][1]
    for e, ep in enumerate(first.recorded):
        ax.plot(*(ep.position.T * 1e3), color="0.5", lw=2.5, label="recorded" if e == 0 else None)
    for name, res in results:
        c = res.commands
        if c is not None and np.any(~c.is_stop):
            pts = c.target_position[~c.is_stop] * 1e3
            label = f"{name} executed"
        else:
            pts = (res.predictions.origin_position + res.predictions.pred_dp[:, 0]) * 1e3
            label = f"{name} step-1 targets"
        ax.plot(*pts.T, lw=1.2, label=label)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_zlabel("z (mm)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_horizon(curves: dict[str, dict[str, Any]], path: Path) -> Path:
    """Translation and rotation error against the chunk step, one line per checkpoint / mode."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, m in curves.items():
        h = m["horizon"]
        steps = np.arange(1, len(h["translation_mm"]) + 1)
        a.plot(steps, h["translation_mm"], "o-", ms=3, label=name)
        b.plot(steps, h["rotation_deg"], "o-", ms=3, label=name)
    a.set(xlabel="chunk step k (t + k dt)", ylabel="translation error (mm)", title="translation error vs horizon")
    b.set(xlabel="chunk step k (t + k dt)", ylabel="rotation error (deg)", title="rotation error vs horizon")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_latency(latencies: dict[str, np.ndarray], path: Path) -> Path:
    """Histogram of inference latency (ms) per checkpoint, p50/p99 in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, lat in latencies.items():
        lat = np.asarray(lat, float)
        if lat.size == 0:
            continue
        ax.hist(lat, bins=min(40, max(5, lat.size // 3)), alpha=0.6,
                label=f"{name}: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms (n={lat.size})")
    ax.set(xlabel="inference latency (ms)", ylabel="count", title="inference latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_ood(result: "BagResult", ood: dict[str, Any], title: str, path: Path) -> Path | None:
    """Each camera's out-of-distribution score over bag time against its threshold (dashed)."""
    scores = result.predictions.ood_score
    cams = list(ood.get("cameras", {}))
    if scores.size == 0 or not cams:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    t = (result.predictions.stamps_ns - result.t0_ns) / 1e9
    order = np.argsort(t)
    for i, cam in enumerate(cams):
        line, = ax.plot(t[order], scores[order, i], ".-", ms=3, lw=0.8, label=f"{cam} score")
        ax.axhline(ood["cameras"][cam]["threshold"], color=line.get_color(), ls="--", lw=1, label=f"{cam} threshold")
    ax.set(xlabel="bag time (s)", ylabel="OOD score (Mahalanobis)", title=title)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def attention_overlay(image: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Upsample a (gh, gw) attention map to the image (nearest patch) and normalise it to [0, 1]."""
    h, w = image.shape[:2]
    gh, gw = attention.shape
    rows = np.minimum((np.arange(h) * gh) // h, gh - 1)
    cols = np.minimum((np.arange(w) * gw) // w, gw - 1)
    heat = np.asarray(attention, np.float64)[rows][:, cols]
    span = heat.max() - heat.min()
    return (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)


def plot_attention(samples: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    """Where the action queries look: query-averaged attention over each camera frame; a row per bag and camera.

    The frame is drawn in grey and the attention (normalised per frame) in colour on top, its opacity
    growing with the attention, so low-attention regions show the frame.
    """
    samples = [s for s in samples if s["attention"]]
    if not samples:
        return None
    plt = _pyplot()
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in samples:
        for cam in sorted(s["attention"]):
            rows.setdefault((s.get("bag", ""), cam), []).append(s)
    ncols = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.8 * ncols, 3.0 * len(rows)), squeeze=False)
    for r, ((bag, cam), items) in enumerate(rows.items()):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(items):
                continue
            img = items[c]["images"][cam]
            heat = attention_overlay(img, items[c]["attention"][cam].mean(0))
            rgba = plt.get_cmap("jet")(heat)
            rgba[..., 3] = 0.15 + 0.6 * heat  # opaque where the queries look, the frame shows through elsewhere
            ax.imshow(img.mean(-1), cmap="gray", vmin=0, vmax=255, interpolation="nearest")  # grey: colours are attention
            ax.imshow(rgba, interpolation="nearest")
            ax.set_title(f"{Path(bag).name} {cam}  t={items[c]['time_s']:.2f} s", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

ROWS = [  # (label, path in the metrics dict, format)
    ("frames evaluated", ("frames",), "{:.0f}"),
    ("translation MAE x (mm)", ("translation_mae_mm", "x"), "{:.2f}"),
    ("translation MAE y (mm)", ("translation_mae_mm", "y"), "{:.2f}"),
    ("translation MAE z (mm)", ("translation_mae_mm", "z"), "{:.2f}"),
    ("translation RMSE x (mm)", ("translation_rmse_mm", "x"), "{:.2f}"),
    ("translation RMSE y (mm)", ("translation_rmse_mm", "y"), "{:.2f}"),
    ("translation RMSE z (mm)", ("translation_rmse_mm", "z"), "{:.2f}"),
    ("rotation error mean (deg)", ("rotation_error_deg", "mean"), "{:.2f}"),
    ("rotation error p95 (deg)", ("rotation_error_deg", "p95"), "{:.2f}"),
    ("gripper accuracy (all steps)", ("gripper_accuracy",), "{:.3f}"),
    ("gripper accuracy (open/close events)", ("gripper_event_accuracy",), "{:.3f}"),
    ("gripper events", ("gripper_events",), "{:.0f}"),
    ("fraction within tolerance", ("within_tolerance",), "{:.3f}"),
    ("executed target error mean (mm)", ("executed", "translation_error_mm", "mean"), "{:.2f}"),
    ("jerk RMS, all ticks (m/s^3)", ("executed", "jerk_rms"), "{:.3g}"),
    ("jerk RMS at chunk seams (m/s^3)", ("executed", "jerk_rms_seams"), "{:.3g}"),
    ("jerk RMS within chunks (m/s^3)", ("executed", "jerk_rms_within"), "{:.3g}"),
    ("jerk RMS of the recording (m/s^3)", ("executed", "jerk_rms_recorded"), "{:.3g}"),
    ("chunk release delay used (ms)", ("executed", "latency_used_ms"), "{:.1f}"),
    ("frames out of distribution (any camera)", ("ood", "fraction_out"), "{:.3f}"),
    ("OOD score p99 / threshold (worst camera)", ("ood", "p99_over_threshold"), "{:.2f}"),
    ("ticks stopped: out of distribution", ("frames_lost", "ood"), "{:.0f}"),
    ("inference latency p50 (ms)", ("latency_ms", "p50"), "{:.1f}"),
    ("inference latency p99 (ms)", ("latency_ms", "p99"), "{:.1f}"),
    ("control ticks", ("frames_lost", "ticks"), "{:.0f}"),
    ("ticks lost: waiting for inputs", ("frames_lost", "waiting"), "{:.0f}"),
    ("ticks lost: stale / out of sync", ("frames_lost", "stale"), "{:.0f}"),
    ("chunks without a label frame", ("frames_lost", "unmatched_chunks"), "{:.0f}"),
    ("replay frames per second", ("frames_per_second",), "{:.1f}"),
    ("replay speed (x real time)", ("speed_vs_real_time",), "{:.2f}"),
]


def lookup(metrics: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """metrics[k1][k2]...; None where any level is absent."""
    node: Any = metrics
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def metric_columns(checkpoints: list["CheckpointResult"]) -> dict[str, dict[str, Any]]:
    """One column per checkpoint and mode, named ``<checkpoint> (<mode>)``: its metrics."""
    return {f"{c.name} ({mode})": m for c in checkpoints for mode, m in c.metrics.items()}


def metric_rows(columns: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(label, formatted cell per column) of every ROWS metric that some column has; '-' where one lacks it."""
    rows = []
    for label, keys, fmt in ROWS:
        vals = [lookup(m, keys) for m in columns.values()]
        if any(v is not None for v in vals):
            rows.append((label, ["-" if v is None else fmt.format(v) for v in vals]))
    return rows


def metrics_table_html(columns: dict[str, dict[str, Any]]) -> str:
    """One row per metric, one column per checkpoint / mode."""
    head = "".join(f"<th>{html.escape(n)}</th>" for n in columns)
    rows = "".join(f"<tr><th class='l'>{html.escape(label)}</th>{''.join(f'<td>{c}</td>' for c in cells)}</tr>"
                   for label, cells in metric_rows(columns))
    return f"<table><tr><th></th>{head}</tr>{rows}</table>"


def metrics_table_text(columns: dict[str, dict[str, Any]]) -> str:
    """The same table as plain text for the terminal."""
    width = max(14, *(len(n) for n in columns))
    lines = [f"{'metric':<40}" + "".join(f"{n:>{width + 2}}" for n in columns)]
    lines += [f"{label:<40}" + "".join(f"{c:>{width + 2}}" for c in cells) for label, cells in metric_rows(columns)]
    return "\n".join(lines)


def _figure(path: Path, root: Path, caption: str) -> str:
    rel = path.relative_to(root).as_posix()
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><a href='{html.escape(rel)}'><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'></a>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}th.l{text-align:left;font-weight:normal}
figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:640px}figcaption{font-size:12px;color:#555}
.note{color:#555;font-size:13px}"""


def write_report(out_dir: str | Path, checkpoints: list["CheckpointResult"], settings: dict[str, Any]) -> Path:
    """Write plots and ``report.html`` for one or more checkpoints replayed on the same bags."""
    out = Path(out_dir)
    plots = out / "plots"
    figures: list[str] = []
    columns = metric_columns(checkpoints)
    figures.append(_figure(plot_horizon(columns, plots / "horizon.png"), out, "error against horizon step"))
    lat = {c.name: c.latencies_ms for c in checkpoints if c.latencies_ms.size}
    if lat:
        figures.append(_figure(plot_latency(lat, plots / "latency.png"), out, "inference latency"))
    bags = [r.bag for r in checkpoints[0].results if r.mode == checkpoints[0].results[0].mode]
    for bag in bags:
        per_ckpt = [(c.name, c.preferred(bag)) for c in checkpoints]
        name = Path(bag).name
        p = plot_path3d(per_ckpt, f"3D path: {name}", plots / f"path3d_{_slug(name)}.png")
        figures.append(_figure(p, out, f"3D path, {name}"))
    sections = []
    for c in checkpoints:
        figs = []
        for res in c.results:
            name = Path(res.bag).name
            p = plot_trajectory(res, f"{c.name} - {name} ({res.mode})",
                                plots / f"trajectory_{_slug(c.name)}_{_slug(name)}_{res.mode}.png")
            figs.append(_figure(p, out, f"{c.name}: predicted vs recorded, {name}, {res.mode} mode"))
            p = plot_ood(res, c.metrics.get(res.mode, {}).get("ood", {}), f"{c.name} - {name} ({res.mode}): out-of-distribution score",
                         plots / f"ood_{_slug(c.name)}_{_slug(name)}_{res.mode}.png")
            if p is not None:
                figs.append(_figure(p, out, f"{c.name}: out-of-distribution score per camera, {name}, {res.mode} mode"))
        samples = [s for res in c.results for s in res.attention]
        p = plot_attention(samples, f"{c.name}: attention of the action queries (mean over the chunk)",
                           plots / f"attention_{_slug(c.name)}.png")
        if p is not None:
            figs.append(_figure(p, out, f"{c.name}: attention overlays on sampled frames"))
        else:
            figs.append("<p class='note'>No attention maps: this encoder's token mode has no spatial tokens.</p>")
        monitor = next((m["ood"]["monitor"] for m in c.metrics.values() if "ood" in m), "not evaluated")
        sections.append(f"<h2>{html.escape(c.name)}</h2><p class='note'>{html.escape(str(c.path))}</p>"
                        f"<p class='note'>Out-of-distribution monitor: {html.escape(monitor)}</p>{''.join(figs)}")
    settings_rows = "".join(f"<tr><th class='l'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in settings.items())
    page = f"""<!DOCTYPE html><html><head><meta charset='utf-8'><title>vit-policy replay report</title>
<style>{CSS}</style></head><body><h1>Offline replay evaluation</h1>
<table>{settings_rows}</table>
<h2>Metrics</h2>{metrics_table_html(columns)}
<p class='note'>Errors compare each predicted chunk with the recorded labels of the same observation (steps past
the episode end excluded). Gripper events are the steps where the recorded gripper target differs from the gripper
state at observation time. Jerk is the third difference of the executed command targets at the control rate; seams are
the ticks where a new chunk takes over.</p>
{''.join(figures)}{''.join(sections)}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
