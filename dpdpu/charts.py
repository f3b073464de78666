"""Charts the command line draws (``--plot FILE.png``), with matplotlib, headless.

Every chart is a plain function from results to a PNG file; the figure is
closed once written, so drawing leaves nothing behind in a long process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from .fidelity import Result

__all__ = ["fidelity_chart"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display is needed, or touched
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise InvalidArgumentError(f"charts are PNG files; {out.name!r} does not end in .png")
    try:
        fig.savefig(out, dpi=110, bbox_inches="tight")
    except OSError as exc:
        raise InvalidArgumentError(f"cannot write {out}: {exc.strerror}") from None
    finally:
        _pyplot().close(fig)
    return out


def fidelity_chart(results: Sequence[Result], path: str | Path) -> Path:
    """Published vs modeled, side by side, one panel per device (log scale: units differ)."""
    plt = _pyplot()
    devices = list(dict.fromkeys(r.check.device for r in results))
    heights = [max(1.5, 0.42 * sum(r.check.device == d for r in results)) for d in devices]
    fig, axes = plt.subplots(
        len(devices), 1, figsize=(9, sum(heights) + 1.2), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    for ax, device in zip(axes[:, 0], devices, strict=True):
        rows = [r for r in results if r.check.device == device]
        ys = range(len(rows))
        published = [r.check.published for r in rows]
        modeled = [r.modeled for r in rows]
        ax.barh([y + 0.2 for y in ys], published, height=0.38, color="#9aa5b1", label="published")
        colors = ["#2b8a3e" if r.ok else ("#c92a2a" if r.check.kind == "calibrated" else "#e67700") for r in rows]
        ax.barh([y - 0.2 for y in ys], modeled, height=0.38, color=colors, label="modeled")
        ax.set_xscale("log")
        ax.set_yticks(list(ys))
        ax.set_yticklabels([f"{r.check.figure} ({r.check.unit})" for r in rows], fontsize=8)
        ax.invert_yaxis()
        for y, r in zip(ys, rows, strict=True):
            mark = "" if r.check.kind == "calibrated" else " (prediction)"
            ax.text(max(r.modeled, r.check.published) * 1.15, y, f"{r.error:+.1%}{mark}", va="center", fontsize=7)
        ax.set_title(device, loc="left", fontsize=10)
        ax.margins(x=0.25)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, ncol=2, frameon=False)
    fig.suptitle("dpdpu emulator: published figures vs modeled (green: within bounds)", fontsize=11, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, path)
