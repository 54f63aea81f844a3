"""hmmsim oracle: run scenarios on a real Linux 6.12 under QEMU and record goldens.

`runner.c` interprets a scenario (docs/scenarios.md) in the guest; `machine`
builds the kernel and runner and boots them; `initramfs` writes the guest's
root; `golden` turns the console transcript into NAME.golden/NAME.log and
compares goldens with the model. docs/oracle.md tells the whole procedure.
"""
