"""Scenarios: small programs run on the model and on a real kernel (docs/scenarios.md).

`parse()` reads the language, `Interpreter`/`run_text()` run it on a
modelled kernel, `generate()` writes seeded random scenarios.
"""

from hmmsim.scenario.interp import Interpreter, Result, run_text, scenario_config
from hmmsim.scenario.lang import LANGUAGE_VERSION, Op, Scenario, ScenarioError, parse

__all__ = [
    "LANGUAGE_VERSION",
    "Interpreter",
    "Op",
    "Result",
    "Scenario",
    "ScenarioError",
    "parse",
    "run_text",
    "scenario_config",
]
