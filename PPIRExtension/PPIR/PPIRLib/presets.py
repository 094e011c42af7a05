"""Registration presets, kept as data files (Resources/Presets/*.json): chosen first, their details under Advanced.

A preset file holds ``order``, ``title``, ``description`` and ``settings``: every field of
``FIELDS`` (RunSettings names), each checked against ``ppir``'s settings contract when it is read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .jobs import RunSettings

FIELDS = {"transform": str, "metric": str, "sampling": str, "sample_fraction": float, "levels": str,
          "max_iterations": int, "bspline_spacing": float}
FOLDER = Path(__file__).resolve().parents[1] / "Resources" / "Presets"


@dataclass(frozen=True)
class Preset:
    name: str          # the file's stem
    order: int
    title: str
    description: str
    settings: dict

    def matches(self, values: dict) -> bool:
        """Whether ``values`` (RunSettings names) hold exactly this preset's settings."""
        for key, wanted in self.settings.items():
            value = values.get(key)
            if isinstance(wanted, float) and isinstance(value, (int, float)):
                if abs(value - wanted) > 1e-9 * max(1.0, abs(wanted)):
                    return False
            elif value != wanted:
                return False
        return True


def read_preset(path: Path) -> Preset:
    """One preset file; ValueError naming the file and the problem."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"preset {Path(path).name}: not readable JSON ({error})") from None
    if not isinstance(data, dict) or set(data) != {"order", "title", "description", "settings"}:
        raise ValueError(f"preset {Path(path).name}: needs exactly order, title, description and settings")
    settings = data["settings"]
    if not isinstance(settings, dict) or set(settings) != set(FIELDS):
        missing = sorted(set(FIELDS) - set(settings or {}))
        unknown = sorted(set(settings or {}) - set(FIELDS))
        raise ValueError(f"preset {Path(path).name}: settings must be {', '.join(FIELDS)}"
                         + (f"; missing {', '.join(missing)}" if missing else "")
                         + (f"; unknown {', '.join(unknown)}" if unknown else ""))
    if not isinstance(data["order"], int) or isinstance(data["order"], bool):
        raise ValueError(f"preset {Path(path).name}: order must be an int, not {data['order']!r}")
    for key, kind in FIELDS.items():
        value = settings[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            settings[key] = value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"preset {Path(path).name}: {key} must be {kind.__name__}, not {value!r}")
    try:
        RunSettings(role="local", protocol="clear", **settings).check()
        factors = [int(f) for f in settings["levels"].split(",")]
    except ValueError as error:
        raise ValueError(f"preset {Path(path).name}: {error}") from None
    if not factors or min(factors) < 1:
        raise ValueError(f"preset {Path(path).name}: levels must be shrink factors >= 1")
    return Preset(Path(path).stem, data["order"], str(data["title"]), str(data["description"]), settings)


def load_presets(folder: Path = FOLDER) -> list[Preset]:
    """Every preset of ``folder``, in their files' ``order``."""
    presets = [read_preset(path) for path in Path(folder).glob("*.json")]
    return sorted(presets, key=lambda preset: (preset.order, preset.name))


def matching(presets: list[Preset], values: dict) -> Preset | None:
    """The preset whose settings ``values`` hold (None: custom settings)."""
    return next((preset for preset in presets if preset.matches(values)), None)
