"""The `hmmsim bench` command (registered by hmmsim.cli)."""

from __future__ import annotations

import json

import click

from hmmsim.cli_options import (
    build_config,
    check_host_memory,
    config_json,
    conflict_option,
    feature_option,
    kernel_host_bytes,
)


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
@feature_option()
@conflict_option
def bench_command(
    size: str,
    repeat: int,
    as_json: bool,
    no_fastpath: bool,
    features: tuple[str, ...],
    conflict_resolution: str | None,
) -> None:
    """Measure migration, hmm_range_fault, faults and fork against a NumPy copy."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from hmmsim.bench import Bench, ram_for

    nbytes = _size(size)
    cfg = build_config(features, "mainline", conflict_resolution)
    # the kernel's RAM, then the copy bound's two buffers and a mirror array
    check_host_memory(kernel_host_bytes(ram_for(nbytes)) + 3 * nbytes, f"--size {size}")
    try:
        b = Bench(nbytes, repeat, config=cfg)
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
        data = b.as_dict()
        data["config"] = config_json(b.k.config)
        click.echo(json.dumps(data, indent=2))
        return
    series = "".join(sorted(cfg.features)) or "none"
    cr = f", {cfg.conflict_resolution}" if cfg.conflict_resolution else ""
    t = Table(title=f"hmmsim bench (repeat {repeat}, series {series}{cr})")
    cols = ("operation", "size", "median ms", "min ms", "max ms", "GB/s", "x copy", "pages/s")
    rows = [
        (
            r.op,
            f"{r.size >> 10} KiB",
            f"{r.median_s * 1e3:.2f}",
            f"{r.min_s * 1e3:.2f}",
            f"{r.max_s * 1e3:.2f}",
            f"{r.gbps:.2f}",
            f"{r.vs_copy:.1f}",
            f"{r.pages_per_s:,.0f}",
        )
        for r in b.rows
    ]
    for i, col in enumerate(cols):
        # numbers never wrap or shrink to an ellipsis
        t.add_column(
            col,
            justify="right" if i else "left",
            no_wrap=bool(i),
            min_width=max([len(col)] + [len(row[i]) for row in rows]) if i else None,
        )
    for row in rows:
        t.add_row(*row)
    out = Console()
    if not out.is_terminal:
        # piped or redirected: as wide as the table needs, not 80 columns
        out = Console(width=max(80, Console(width=1000).measure(t).maximum))
    out.print(t)
    m = b.memory()
    click.echo(
        f"metadata: {m['struct_page_bytes']} bytes per modelled 4 KiB page "
        f"(the kernel's struct page: {m['kernel_struct_page_bytes']})"
    )
