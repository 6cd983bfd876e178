#!/usr/bin/env python3
"""Write boutiques/vbm-predict.json from the BIDS-App argument parser (the one source of the options).

    python scripts/make_boutiques.py            # rewrite the descriptor
    python scripts/make_boutiques.py --check    # exit 1 when the checked-in descriptor is out of date

Every option of :func:`bids_app.cli.parser.build_parser` becomes one Boutiques input (``--version``
and ``--help`` print and exit, so they are not inputs): its first long flag, its help text, its type
(directories and files -> File, whole numbers -> Number with ``integer``, the AD threshold -> Number
in (0, 1), choices -> ``value-choices``, ``nargs='+'`` -> list, switches -> Flag) and its default.
An option added to the parser is therefore one command away from the descriptor, and
tests/test_boutiques.py fails until that command has been run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bids_app import __version__  # noqa: E402
from bids_app.cli.parser import ANALYSIS_LEVELS, build_parser, positive_int  # noqa: E402

DESCRIPTOR = ROOT / "boutiques" / "vbm-predict.json"
IMAGE = f"vbm-predict:{__version__}"


def _flag(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings)[0]


def _value_key(dest: str) -> str:
    return f"[{dest.upper()}]"


def _input(action: argparse.Action) -> dict[str, Any]:
    positional = not action.option_strings
    entry: dict[str, Any] = {
        "id": action.dest,
        "name": action.dest.replace("_", " "),
        "description": (action.help or "").replace("%(default)s", str(action.default)),
        "value-key": _value_key(action.dest),
        "optional": not positional,
    }
    if not positional:
        entry["command-line-flag"] = _flag(action)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._CountAction)):
        entry["type"] = "Flag"
        return entry
    if action.dest == "analysis_level":
        entry.update(type="String", **{"value-choices": list(ANALYSIS_LEVELS)})
    elif action.choices:
        entry.update(type="String", **{"value-choices": list(action.choices)})
    elif action.type is positive_int:
        entry.update(type="Number", integer=True, minimum=1)
    elif getattr(action.type, "__name__", "") == "_threshold":
        entry.update(type="Number", minimum=0, maximum=1, **{"exclusive-minimum": True, "exclusive-maximum": True})
    elif getattr(action.type, "__name__", "") in ("_positive_mm", "positive_float"):
        entry.update(type="Number", minimum=0, **{"exclusive-minimum": True})
    elif action.type is float:
        entry["type"] = "Number"
    elif action.dest == "output_dir":
        entry["type"] = "String"  # created by the app; Boutiques File inputs must exist
    elif action.dest in ("bids_dir", "derivatives", "dartel_template"):
        entry["type"] = "File"
    else:
        entry["type"] = "String"
    if action.nargs in ("+", "*"):
        entry["list"] = True
    if not positional and action.default not in (None, [], False) and not isinstance(action.default, Path):
        entry["default-value"] = action.default
    return entry


def build_descriptor() -> dict[str, Any]:
    parser = build_parser()
    actions = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]
    inputs = [_input(a) for a in actions]
    command = " ".join(["vbm-predict"] + [i["value-key"] for i in inputs])
    return {
        "name": "vbm-predict",
        "tool-version": __version__,
        "schema-version": "0.5",
        "description": parser.description,
        "author": "vbm-predict developers",
        "url": "https://github.com/vbm-predict/vbm-predict",
        "command-line": command,
        "container-image": {"type": "docker", "image": IMAGE, "entrypoint": True},
        "inputs": inputs,
        "output-files": [
            {
                "id": "output_dir_out",
                "name": "output directory",
                "description": "BIDS-Derivatives dataset: GM maps, predictions, reports, logs",
                "path-template": "[OUTPUT_DIR]",
                "optional": False,
            },
        ],
        "error-codes": [
            {"code": 1, "description": "some T1w images failed for different reasons; the others were written"},
            {"code": 16, "description": "the BIDS validator found errors in the input"},
            {"code": 17, "description": "unknown analysis level"},
            {"code": 18, "description": "the participant / session filters selected nothing"},
            {"code": 64, "description": "wrong usage"},
            {"code": 65, "description": "bad input data"},
            {"code": 66, "description": "missing input"},
            {"code": 70, "description": "internal error or missing tool"},
            {"code": 73, "description": "the output or work directory cannot be created"},
        ],
        "suggested-resources": {"cpu-cores": 1, "ram": 4, "walltime-estimate": 1800},
        "tags": {"domain": ["neuroinformatics", "mri", "bids-app"], "research-use-only": True},
    }


def render() -> str:
    return json.dumps(build_descriptor(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when out of date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not DESCRIPTOR.is_file() or DESCRIPTOR.read_text() != text:
            print(f"{DESCRIPTOR} is out of date: run python scripts/make_boutiques.py", file=sys.stderr)
            return 1
        return 0
    DESCRIPTOR.parent.mkdir(parents=True, exist_ok=True)
    DESCRIPTOR.write_text(text)
    print(f"wrote {DESCRIPTOR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
