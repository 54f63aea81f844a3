"""Simulation on top of the model (issue 17): a GPU-like device on the real
HMM driver API, simulated time and a cost model, migration policies,
workloads, metrics, plots and traces.

Modules: params (the cost-model table, presets, TOML), clock (the
discrete-event clock), policy (prefetch / eviction / granularity hooks and
the presets), workloads (seeded generators, CSV/JSONL trace import), engine
(Simulation: runs a workload through the driver and charges time), export
(Chrome trace-event JSON, plots, the why-it-moved log), cli (`hmmsim sim`).
docs/simulation.md describes them and cites every default.
"""

from hmmsim.sim.engine import Metrics, Simulation, run
from hmmsim.sim.params import INTERCONNECTS, SimParams
from hmmsim.sim.policy import POLICIES, Policy, make_policy
from hmmsim.sim.workloads import GENERATORS, Workload, make_workload

__all__ = [
    "GENERATORS",
    "INTERCONNECTS",
    "POLICIES",
    "Metrics",
    "Policy",
    "SimParams",
    "Simulation",
    "Workload",
    "make_policy",
    "make_workload",
    "run",
]
