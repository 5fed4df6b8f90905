"""Shared figure plumbing: an Agg canvas per figure (no pyplot state), method colours, run titles."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import DataError

DPI = 100
# Fixed colours for the known methods so every figure of a study reads the same way.
METHOD_COLORS = {
    "lora": "tab:blue", "pissa": "tab:green", "ba-lora": "tab:red", "dora": "tab:purple",
    "dual-lora": "tab:orange", "full": "tab:gray",
}
_SPARE_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "black", "gold", "navy", "teal")
TITLE_KEYS = ("method", "model", "dataset", "label_noise", "imbalance_ratio", "rank", "seed")


def new_figure(width: float, height: float):
    """A matplotlib Figure drawn with the Agg canvas; it leaves pyplot and the global backend alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig, out_path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``out_path`` (parent folders created) and return the path."""
    out = Path(out_path)
    if out.suffix.lower() != ".png":
        out = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, bbox_inches="tight", format="png", facecolor="white")
    buffer.seek(0)
    from PIL import Image  # a matplotlib dependency

    # A 256-colour palette keeps line and scatter figures sharp at about a third of the size.
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256).save(out, format="PNG", optimize=True)
    return out


def method_order(name: str) -> tuple[int, str]:
    """Sort key: the known methods in their usual order (lora, pissa, ba-lora, ...), others after, by name."""
    base = str(name).split(" (")[0]
    order = list(METHOD_COLORS)
    return (order.index(base) if base in order else len(order), str(name))


def color_map(names: Iterable[str]) -> dict[str, str]:
    """A colour per name: the fixed one for known methods, then spare colours in order."""
    colors: dict[str, str] = {}
    spare = iter(_SPARE_COLORS * 4)
    for name in names:
        if name not in colors:
            base = str(name).split(" (")[0]
            colors[name] = METHOD_COLORS.get(base) or next(spare, "black")
    return colors


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """``RUN/config.yaml`` as a dict, or ``{}`` when absent or unreadable (it only titles plots)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def run_title(run_dir: Path) -> str:
    """A short title for a run: its method, data and settings from config.yaml, else the folder name."""
    config = read_run_config(run_dir)
    parts = [f"{key}={config[key]}" for key in TITLE_KEYS
             if key in config and config[key] is not None and not isinstance(config[key], (dict, list))]
    return " ".join(parts) if parts else run_dir.resolve().name


def require_dir(path: str | Path, what: str, writer: str) -> Path:
    """``path`` as a Path, or a DataError saying that it is missing and which command writes it."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{what} {str(p)!r} does not exist or is not a directory; {writer} writes it.")
    return p
