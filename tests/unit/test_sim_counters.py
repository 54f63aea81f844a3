"""Access counter notifications in batches, and the CPU side's own counters."""

from __future__ import annotations

from hmmsim.sim import SimParams, Simulation

DENSE = "random:size=4M,n=8192,write=0"  # 8 reads per page: regions reach 256


def test_access_counter_notifications_are_serviced_in_batches(monkeypatch):
    sizes = []
    real = Simulation._service_ac_batch

    def spy(self):
        sizes.append(len(self.dev.ac_notifications))
        return real(self)

    monkeypatch.setattr(Simulation, "_service_ac_batch", spy)
    one = Simulation(DENSE, "nvidia-uvm-ac", SimParams(ac_batch=1)).run()
    assert one.ac_notifications > 4 and one.ac_batches == one.ac_notifications
    assert set(sizes) == {1}
    sizes.clear()
    four = Simulation(DENSE, "nvidia-uvm-ac", SimParams(ac_batch=4)).run()
    assert sizes and max(sizes) <= 4 and sum(sizes) == four.ac_notifications
    assert four.ac_batches == len(sizes) < four.ac_notifications
    # a batch migrates what the notifications name, later than one at a time
    assert four.pages_access_counter > 0 and four.data_errors == 0


def test_cpu_side_counters_split_device_to_host_traffic():
    m = Simulation("pingpong:size=4M,rounds=2,oversub=2", "naive").run()
    assert m.cpu_faults > 0 and m.evicted_pages > 0
    assert m.pages_d2h == m.pages_d2h_cpu + m.evicted_pages
    assert m.pages_d2h_cpu >= m.cpu_faults  # each migrate_to_ram moves its page at least
