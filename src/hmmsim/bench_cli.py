"""The `hmmsim bench` command (registered by hmmsim.cli)."""

from __future__ import annotations

import json

import click


def _size(text: str) -> int:
    from hmmsim.cli import _parse_size

    return _parse_size(text)


@click.command("bench")
@click.option(
    "--size",
    default="64M",
    show_default=True,
    help="Largest size measured (e.g. 1G); sizes from 512K up to it.",
)
@click.option("--repeat", default=3, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--no-fastpath",
    is_flag=True,
    help="Run the per-entry code only (Kernel.fastpath off), to compare with the bulk paths.",
)
def bench_command(size: str, repeat: int, as_json: bool, no_fastpath: bool) -> None:
    """Measure migration, hmm_range_fault, faults and fork against a NumPy copy."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from hmmsim.bench import Bench

    try:
        b = Bench(_size(size), repeat)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    b.k.fastpath = not no_fastpath
    tasks = b.tasks()
    err = Console(stderr=True)
    with Progress(console=err, transient=True, disable=as_json) as progress:
        bar = progress.add_task("benchmark", total=len(tasks))
        for name, fn in tasks:
            progress.update(bar, description=name)
            fn()
            progress.advance(bar)
    if as_json:
        click.echo(json.dumps(b.as_dict(), indent=2))
        return
    t = Table(title=f"hmmsim bench (repeat {repeat})")
    for col in ("operation", "size", "median ms", "min ms", "max ms", "GB/s", "x copy", "pages/s"):
        t.add_column(col, justify="right" if col != "operation" else "left")
    for r in b.rows:
        t.add_row(
            r.op,
            f"{r.size >> 10} KiB",
            f"{r.median_s * 1e3:.2f}",
            f"{r.min_s * 1e3:.2f}",
            f"{r.max_s * 1e3:.2f}",
            f"{r.gbps:.2f}",
            f"{r.vs_copy:.1f}",
            f"{r.pages_per_s:,.0f}",
        )
    Console().print(t)
    m = b.memory()
    click.echo(
        f"metadata: {m['struct_page_bytes']} bytes per modelled 4 KiB page "
        f"(the kernel's struct page: {m['kernel_struct_page_bytes']})"
    )
