"""What ``vbm-predict --version`` reports: the app, the model packages found, the preprocessing tools.

A result is only reproducible when its software is known, so the report names everything that decides
the numbers: the app's version, each model package (name, version, the sha256 of every fold as its card
records it; ``load_package`` re-checks them before any use), the preprocessing tools (antspyx and the
ANTs it wraps; SPM standalone and Clinica when they are configured) and the container it runs in.
Reading it is cheap: no network, no weights loaded, no MATLAB Runtime started.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__

__all__ = ["version_info", "version_report"]


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _packages(models_dir: Path | None) -> list[dict[str, Any]]:
    if models_dir is None or not models_dir.is_dir():
        return []
    out = []
    for card_path in sorted(models_dir.glob("*/model.json")):
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
            out.append(
                {
                    "name": str(card["name"]),
                    "version": str(card["version"]),
                    "task": str(card["task"]),
                    "sha256": [str(f["sha256"]) for f in card["folds"]],
                    "generation": (card.get("provenance") or {}).get("generation", {}).get("id"),
                }
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.append({"name": card_path.parent.name, "error": f"unreadable model.json ({exc})"})
    return out


def _clinica_version() -> str | None:
    python = os.environ.get("CLINICA_PYTHON")
    if not python or not Path(python).is_file():
        return None
    venv = Path(python).parent.parent  # the dist-info names the version; importing Clinica takes seconds
    for dist in sorted(venv.glob("lib/python3*/site-packages/clinica-*.dist-info")):
        return dist.name[len("clinica-") : -len(".dist-info")]
    return None


def _spm() -> dict[str, str] | None:
    home = os.environ.get("SPMSTANDALONE_HOME")
    if not home or not Path(home).is_dir():
        return None
    stamp = Path(home) / "VERSION.vbm-predict"  # written by docker/install_spm.sh
    return {
        "home": home,
        "version": stamp.read_text().strip() if stamp.is_file() else "unknown",
        "mcr_home": os.environ.get("MCR_HOME", ""),
    }


def version_info(models_dir: Path | None = None) -> dict[str, Any]:
    """Everything the report prints, as data. ``models_dir`` defaults to ``$VBM_PREDICT_MODELS``."""
    from .workflows import MODELS_ENV, _container_info

    if models_dir is None and os.environ.get(MODELS_ENV):
        models_dir = Path(os.environ[MODELS_ENV])
    ants = _dist_version("antspyx")
    return {
        "vbm-predict": __version__,
        "python": platform.python_version(),
        "torch": _dist_version("torch"),
        "models_dir": str(models_dir) if models_dir else None,
        "models": _packages(models_dir),
        "preprocessing": {"antspyx": ants, "spm": _spm(), "clinica": _clinica_version()},
        "container": _container_info(),
    }


def version_report(models_dir: Path | None = None) -> str:
    """The text ``vbm-predict --version`` prints (first line: ``vbm-predict <version>``)."""
    info = version_info(models_dir)
    lines = [f"vbm-predict {info['vbm-predict']}", f"python {info['python']}, torch {info['torch']}"]
    container = info["container"]
    lines.append(f"container: {container['Type']} ({container['Tag']})" if container else "container: none")
    lines.append(f"model packages in {info['models_dir'] or '(none: no --models default; $VBM_PREDICT_MODELS unset)'}:")
    for pkg in info["models"]:
        if "error" in pkg:
            lines.append(f"  {pkg['name']}: {pkg['error']}")
            continue
        gen = f", published generation {pkg['generation']}" if pkg["generation"] else ""
        lines.append(f"  {pkg['name']} {pkg['version']} ({pkg['task']}, {len(pkg['sha256'])} fold(s){gen})")
        lines.extend(f"    sha256 {h}" for h in pkg["sha256"])
    if not info["models"]:
        lines.append("  none found")
    pre = info["preprocessing"]
    lines.append(f"preprocessing: antspyx {pre['antspyx'] or 'not installed'} (ants backend)")
    spm = pre["spm"]
    lines.append(
        f"preprocessing: SPM standalone {spm['version']} in {spm['home']} (MCR_HOME {spm['mcr_home']}); "
        f"Clinica {pre['clinica'] or 'not found'}"
        if spm
        else "preprocessing: SPM standalone not configured"
    )
    return "\n".join(lines)
