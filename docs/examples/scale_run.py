"""One simulation as `hmmsim sim SPEC --policy P --data-plane tokens [--device-mem B]`
runs it (no move log), with a progress log, wall and CPU time and the peak RSS.

    python docs/examples/scale_run.py SPEC POLICY OUT.json [DEVICE_MEM_BYTES]

Writes OUT.json (the metrics plus wall_s, setup_s, run_s, cpu_s, maxrss_mib,
ram_bytes) and OUT.json.progress (a line per 1% of the accesses). The scale
runs of docs/simulation.md ("Big footprints") were made with it.
"""

import json
import resource
import sys
import time

from hmmsim.kconfig import KConfig
from hmmsim.sim import Simulation, make_workload


def main() -> None:
    spec, policy, out = sys.argv[1], sys.argv[2], sys.argv[3]
    dev = int(sys.argv[4]) if len(sys.argv) > 4 else None
    t0 = time.perf_counter()
    wl = make_workload(spec)
    sim = Simulation(
        wl, policy, device_mem=dev, config=KConfig(data_plane="tokens"), log_moves=False
    )
    t1 = time.perf_counter()
    with open(out + ".progress", "w") as log:

        def progress(i: int, n: int) -> None:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
            log.write(f"{time.perf_counter() - t0:.0f}s {i}/{n} rss {rss} MiB\n")
            log.flush()

        m = sim.run(progress)
    t2 = time.perf_counter()
    r = resource.getrusage(resource.RUSAGE_SELF)
    d = m.as_dict()
    d.update(
        wall_s=round(t2 - t0, 1),
        setup_s=round(t1 - t0, 1),
        run_s=round(t2 - t1, 1),
        cpu_s=round(r.ru_utime + r.ru_stime, 1),
        maxrss_mib=r.ru_maxrss >> 10,
        ram_bytes=sim.k.config.ram_bytes,
    )
    with open(out, "w") as f:
        json.dump(d, f, indent=1)


if __name__ == "__main__":
    main()
