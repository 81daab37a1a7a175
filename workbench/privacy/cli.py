"""``workbench privacy RUN_DIR``: attack a finished run's saved messages again.

Rebuilds the run's data and model from its scenario.yaml, reads the messages
it saved under privacy/, runs the scenario's attacks (or those given with
``--attack``) and rewrites privacy.csv and privacy_roc.png.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from workbench.errors import WorkbenchError
from workbench.rundir import RUN_MARKER


def parse_attack(text: str) -> dict:
    """``--attack`` text: a name, or a YAML mapping ``{name: lira, shadows: 16}``."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise WorkbenchError(f"--attack {text!r} is not YAML ({e.problem})") from None
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value
    raise WorkbenchError(
        f"--attack {text!r}: expected an attack name or a mapping with a name"
    )


def attack_run(run_dir: str, attacks: list[str] | None, data_dir=None) -> str:
    """Runs the attacks on ``run_dir``; a one-line summary of what was written."""
    from workbench.data import resolve_data_dir
    from workbench.engine import build
    from workbench.privacy.run import ATTACKS
    from workbench.privacy.stage import PRIVACY_CSV, rerun
    from workbench.scenario import load_scenario

    path = Path(run_dir)
    if not (path / RUN_MARKER).is_file():
        raise WorkbenchError(f"{path}: no {RUN_MARKER} there; expected a run directory")
    specs = None
    if attacks:
        specs = [parse_attack(a) for a in attacks]
        for i, spec in enumerate(specs):
            rest = {k: v for k, v in spec.items() if k != "name"}
            ATTACKS.validate(spec["name"], rest, f"--attack[{i}]")
    scenario = load_scenario(path / RUN_MARKER)
    sim = build(scenario, resolve_data_dir(data_dir))
    result = rerun(sim, path, specs)
    rounds = sorted({r["round"] for r in result.rows})
    names = sorted({r["attack"] for r in result.rows})
    return (
        f"attacked {result.messages} messages of rounds {rounds} with "
        f"{', '.join(names)}; wrote {path / PRIVACY_CSV}"
    )
