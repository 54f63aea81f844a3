"""`hmmsim explain WORD`: decode one 64-bit word the way the kernel would read it.

A word can be read as:

- ``pte``: an x86-64 PTE (include/pgtable.py): present (PFN and flag bits,
  PROT_NONE with its inverted PFN), empty, or a software leaf (the swap PTE
  of arch/x86/include/asm/pgtable_64.h: inverted offset, type on top, the
  soft-dirty / uffd-wp / exclusive bits of a swap PTE);
- ``pmd``: an x86-64 PMD: a huge leaf (PSE), a pointer to a PTE table, or a
  PMD-level software leaf (only migration and device-private entries are
  valid there: leafops.h softleaf_is_valid_pmd_entry);
- ``softleaf`` / ``swp``: the arch-independent swp_entry_t / softleaf_t
  (type << SWP_TYPE_SHIFT | offset; include/swapops.py);
- ``mpfn``: a migrate_vma src[]/dst[] slot (MIGRATE_PFN_*, include/migrate.py);
- ``hmm``: an hmm_range_fault input/output word (HMM_PFN_*, include/hmm.py).

Every decoding follows the configuration (seed-series switches and kernel
profile): series (b) renumbers the swap types, (c) makes device-private
"PFNs" offsets and adds HMM_PFN_DEVICE_PRIVATE, (a) gives MIGRATE_PFN bit 5 a
meaning, (c)/(e) move HMM_PFN_ORDER_SHIFT, and the 6.12 profile has two
device-exclusive types. Without ``--as`` every reading that is plausible
(a word the kernel could have written there) is shown, then the readings
ruled out, each with the reason.

Not kernel code: a reader of the encodings in hmmsim.include.
"""

from __future__ import annotations

from dataclasses import dataclass

from hmmsim.kconfig import MAX_PHYSMEM_BITS, PAGE_SHIFT, KConfig

U64 = (1 << 64) - 1

#: Readings, in the order they are shown; "swp" is an alias of "softleaf".
KINDS = ("pte", "pmd", "softleaf", "mpfn", "hmm")
ALIASES = {"swp": "softleaf"}

#: swap type names, most specific first (6.12's SWP_DEVICE_EXCLUSIVE is its _WRITE)
_SWP_TYPE_NAMES = (
    "SWP_HWPOISON",
    "SWP_MIGRATION_READ",
    "SWP_MIGRATION_READ_EXCLUSIVE",
    "SWP_MIGRATION_WRITE",
    "SWP_DEVICE_WRITE",
    "SWP_DEVICE_READ",
    "SWP_DEVICE_EXCLUSIVE_WRITE",
    "SWP_DEVICE_EXCLUSIVE_READ",
    "SWP_DEVICE_EXCLUSIVE",
    "SWP_MIGRATION_DEVICE_READ",
    "SWP_MIGRATION_DEVICE_READ_EXCLUSIVE",
    "SWP_MIGRATION_DEVICE_WRITE",
    "SWP_PTE_MARKER",
)

#: Physical frames a PTE/PMD may name: MAX_PHYSMEM_BITS of address space.
_MAX_PFN = 1 << (MAX_PHYSMEM_BITS - PAGE_SHIFT)


@dataclass
class Reading:
    """One way to read a word: kind (one of KINDS), plausible, text (the decode
    in kernel names) and why (the reason it is ruled out, when not plausible)."""

    kind: str
    plausible: bool
    text: str
    why: str = ""


def parse_word(text: str) -> int:
    """A word from the command line: hex (0x...), octal (0o...), binary (0b...) or
    decimal, underscores allowed. Raises ValueError, with a one-line reason,
    for anything else, a negative value or one wider than 64 bits."""
    t = text.strip().replace("_", "").lower()
    try:
        v = int(t, 0)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a number: give a 64-bit word in hex (0x...) or decimal"
        ) from None
    if v < 0:
        raise ValueError(f"{text} is negative: give the word as an unsigned 64-bit value")
    if v > U64:
        raise ValueError(f"{text} does not fit in 64 bits")
    return v


def swp_type_name(swp, t: int) -> str:
    """'SWP_DEVICE_WRITE' for a special swap type number, 'swap file N' below
    MAX_SWAPFILES."""
    if t < swp.MAX_SWAPFILES:
        return f"swap file {t}"
    for name in _SWP_TYPE_NAMES:
        if getattr(swp, name, None) == t:
            return name
    return f"type {t}"


def _softleaf_text(swp, entry: int) -> str:
    t = swp.swp_type(entry)
    return (
        f"{swp.describe_softleaf(entry)}  (swp_entry_t {entry:#x}: type {t} "
        f"{swp_type_name(swp, t)}, offset {swp.swp_offset(entry):#x})"
    )


def _softleaf_problem(swp, entry: int) -> str:
    """Why no kernel path writes this softleaf entry, or ""."""
    from hmmsim.include.swapops import SWP_MIG_DIRTY, SWP_MIG_YOUNG, SWP_PFN_MASK

    try:
        swp.softleaf_type(entry)
    except ValueError as e:
        return str(e)
    off = swp.swp_offset(entry)
    if swp.softleaf_is_marker(entry):
        if off & ~swp.PTE_MARKER_MASK:
            return f"marker bits {off & ~swp.PTE_MARKER_MASK:#x} are no PTE_MARKER_*"
        return ""
    if swp.softleaf_has_pfn(entry):
        rest = off & ~SWP_PFN_MASK
        if swp.softleaf_is_migration(entry) and swp.migration_entry_supports_ad():
            rest &= ~(SWP_MIG_YOUNG | SWP_MIG_DIRTY)
        if rest:
            return f"offset bits {rest:#x} above the PFN are set (the kernel never sets them)"
    return ""


def read_softleaf(cfg: KConfig, word: int) -> Reading:
    from hmmsim.include.swapops import SWP_TYPE_SHIFT, SwapLayout

    swp = SwapLayout(cfg)
    if word >> 63:
        return Reading(
            "softleaf",
            False,
            f"type field {word >> SWP_TYPE_SHIFT}",
            "bit 63 is set: a swp_entry_t has 63 bits (BITS_PER_XA_VALUE)",
        )
    if word == 0:
        return Reading("softleaf", True, "SOFTLEAF_NONE (softleaf_mk_none)")
    text = _softleaf_text(swp, word)
    problem = _softleaf_problem(swp, word)
    return Reading("softleaf", not problem, text, problem)


def _swap_pte_soft_bits(word: int, pmd: bool) -> str:
    from hmmsim.include.pgtable import (
        _PAGE_SWP_EXCLUSIVE,
        _PAGE_SWP_SOFT_DIRTY,
        _PAGE_SWP_UFFD_WP,
    )

    bits = [(_PAGE_SWP_SOFT_DIRTY, "SWP_SOFT_DIRTY"), (_PAGE_SWP_UFFD_WP, "SWP_UFFD_WP")]
    if not pmd:
        bits.append((_PAGE_SWP_EXCLUSIVE, "SWP_EXCLUSIVE"))
    names = [n for b, n in bits if word & b]
    return f" [{' '.join(names)}]" if names else ""


def _stray_low_bits(word: int, pmd: bool) -> str:
    """Bits 3/4..7 of a non-present entry the kernel never sets in a swap entry
    (bit 3 is the PTE-only exclusive mark; A/D may be set by the KNL erratum)."""
    from hmmsim.include.pgtable import (
        _PAGE_PCD,
        _PAGE_PSE,
        _PAGE_PWT,
    )

    stray = _PAGE_PCD | _PAGE_PSE | (_PAGE_PWT if pmd else 0)
    return f"{word & stray:#x}" if word & stray else ""


#: Bits 52..56 of an x86-64 entry: above the 52-bit physical mask, below the
#: software bits 57/58 and the protection keys; Linux never sets them.
_UNUSED_HIGH = ((1 << 57) - 1) & ~((1 << 52) - 1)


def _present_problem(word: int, pfn: int) -> str:
    """Why a present (or PROT_NONE) user entry cannot look like this, or ""."""
    from hmmsim.include.pgtable import _PAGE_GLOBAL, _PAGE_PRESENT, _PAGE_USER

    if word & _UNUSED_HIGH:
        return f"bits {word & _UNUSED_HIGH:#x} (52..56) are never set by Linux"
    if pfn >= _MAX_PFN:
        return f"pfn {pfn:#x} is beyond the {MAX_PHYSMEM_BITS}-bit physical address space"
    if word & _PAGE_PRESENT and not word & _PAGE_USER:
        return "no _PAGE_USER: not a user mapping"
    if word & _PAGE_PRESENT and word & _PAGE_GLOBAL:
        return "_PAGE_GLOBAL on a user mapping"
    return ""


def read_pte(cfg: KConfig, word: int) -> Reading:
    from hmmsim.include.pgtable import (
        _PAGE_KNL_ERRATUM_MASK,
        pte_flag_names,
        pte_pfn,
        pte_present,
        pte_protnone,
    )
    from hmmsim.include.swapops import SwapLayout

    if not word & ~_PAGE_KNL_ERRATUM_MASK:
        extra = f" (only A/D set: {word:#x}, the KNL erratum)" if word else ""
        return Reading("pte", True, "pte_none: nothing mapped" + extra)
    if pte_present(word):
        pfn = pte_pfn(word)
        names = ["PAT" if n == "PSE" else n for n in pte_flag_names(word)]
        what = "PROT_NONE (pte_protnone; the PFN is stored inverted)" if pte_protnone(word) else ""
        text = f"present pfn={pfn:#x} [{' '.join(names)}]" + (f" {what}" if what else "")
        problem = _present_problem(word, pfn)
        return Reading("pte", not problem, text, problem)
    swp = SwapLayout(cfg)
    entry = swp.softleaf_from_pte(word)
    text = "swap PTE: " + _softleaf_text(swp, entry) + _swap_pte_soft_bits(word, pmd=False)
    stray = _stray_low_bits(word, pmd=False)
    if stray:
        return Reading("pte", False, text, f"bits {stray} are never set in a swap PTE")
    problem = _softleaf_problem(swp, entry)
    return Reading("pte", not problem, text, problem)


def read_pmd(cfg: KConfig, word: int) -> Reading:
    from hmmsim.include.pgtable import (
        _PAGE_KNL_ERRATUM_MASK,
        _PAGE_PSE,
        pmd_bad,
        pmd_pfn,
        pmd_protnone,
        pte_flag_names,
        table_entry_pfn,
    )
    from hmmsim.include.swapops import SwapLayout

    if not word & ~_PAGE_KNL_ERRATUM_MASK:
        return Reading("pmd", True, "pmd_none: no PTE table, no huge page")
    if word & _PAGE_PSE:
        pfn = pmd_pfn(word)
        what = " PROT_NONE (pmd_protnone; the PFN is stored inverted)" if pmd_protnone(word) else ""
        names = pte_flag_names(word) + (["PAT_LARGE"] if word & (1 << 12) else [])
        text = f"huge PMD (pmd_leaf) pfn={pfn:#x} [{' '.join(names)}]{what}"
        resv = (word ^ (U64 if pmd_protnone(word) else 0)) & 0x1FE000
        if resv:
            return Reading(
                "pmd",
                False,
                text,
                f"bits {resv:#x} (13..20) of a huge PMD must be 0: its PFN is 2 MiB aligned",
            )
        problem = _present_problem(word, pfn)
        return Reading("pmd", not problem, text, problem)
    if word & 1:
        pfn = table_entry_pfn(word)
        text = f"points to a PTE table at pfn {pfn:#x} [{' '.join(pte_flag_names(word))}]"
        if pmd_bad(word):
            return Reading("pmd", False, text, "pmd_bad: not the flags of a user page table")
        return Reading("pmd", True, text)
    if pmd_protnone(word):
        return Reading(
            "pmd", False, "PROT_NONE without PSE", "a PROT_NONE PMD is always a huge leaf"
        )
    swp = SwapLayout(cfg)
    entry = swp.softleaf_from_pmd(word)
    text = "PMD softleaf: " + _softleaf_text(swp, entry) + _swap_pte_soft_bits(word, pmd=True)
    stray = _stray_low_bits(word, pmd=True)
    if stray:
        return Reading("pmd", False, text, f"bits {stray} are never set in a PMD softleaf")
    try:
        valid = swp.softleaf_is_valid_pmd_entry(entry)
    except ValueError:
        valid = False
    if not valid:
        return Reading(
            "pmd",
            False,
            text,
            "only migration and device-private entries can sit in a PMD "
            "(softleaf_is_valid_pmd_entry)",
        )
    problem = _softleaf_problem(swp, entry)
    return Reading("pmd", not problem, text, problem)


def read_mpfn(cfg: KConfig, word: int) -> Reading:
    from hmmsim.include.migrate import (
        MIGRATE_PFN_COMPOUND,
        MIGRATE_PFN_DEVICE_PRIVATE,
        MIGRATE_PFN_MIGRATE,
        MIGRATE_PFN_SHIFT,
        MIGRATE_PFN_VALID,
        MIGRATE_PFN_WRITE,
    )

    names = [
        (MIGRATE_PFN_VALID, "VALID"),
        (MIGRATE_PFN_MIGRATE, "MIGRATE"),
        (MIGRATE_PFN_WRITE, "WRITE"),
        (MIGRATE_PFN_COMPOUND, "COMPOUND"),
    ]
    if cfg.has("a"):
        names.append((MIGRATE_PFN_DEVICE_PRIVATE, "DEVICE_PRIVATE"))
    flags = "|".join(f"MIGRATE_PFN_{n}" for b, n in names if word & b) or "0"
    pfn = word >> MIGRATE_PFN_SHIFT
    if word & MIGRATE_PFN_VALID:
        label = (
            "device-private offset" if cfg.has("c") and word & MIGRATE_PFN_DEVICE_PRIVATE else "pfn"
        )
        text = f"{label}={pfn:#x} {flags}"
    else:
        text = flags + (f" (stale pfn bits {pfn:#x})" if pfn else "")
    if word & (1 << 2):
        return Reading("mpfn", False, text, "bit 2 (formerly MIGRATE_PFN_LOCKED) is unused")
    if word & MIGRATE_PFN_DEVICE_PRIVATE and not cfg.has("a"):
        return Reading(
            "mpfn",
            False,
            text + " +bit5",
            "bit 5 is MIGRATE_PFN_DEVICE_PRIVATE only with series (a) (try --feature a)",
        )
    if pfn and not word & MIGRATE_PFN_VALID:
        return Reading("mpfn", False, text, "PFN bits without MIGRATE_PFN_VALID")
    if word and not word & (MIGRATE_PFN_VALID | MIGRATE_PFN_MIGRATE):
        return Reading("mpfn", False, text, "flags without VALID or MIGRATE")
    return Reading("mpfn", True, text)


def read_hmm(cfg: KConfig, word: int) -> Reading:
    from hmmsim.include.hmm import HMM_PFN_ORDER_BITS, HmmPfnLayout

    L = HmmPfnLayout(cfg)
    pos = L.bit_positions()
    order_mask = ((1 << HMM_PFN_ORDER_BITS) - 1) << L.HMM_PFN_ORDER_SHIFT
    known = order_mask
    for n in pos:
        known |= getattr(L, n)
    names = [f"{n}(bit {b})" for n, b in pos.items() if word & getattr(L, n)]
    pfn = L.hmm_pfn_to_pfn(word)
    order = L.hmm_pfn_to_map_order(word)
    label = (
        "device-private offset"
        if L.HMM_PFN_DEVICE_PRIVATE and word & L.HMM_PFN_DEVICE_PRIVATE
        else "pfn"
    )
    text = (
        f"{label}={pfn:#x} order={order} {'|'.join(names) or '0'} "
        f"(HMM_PFN_ORDER_SHIFT {L.HMM_PFN_ORDER_SHIFT})"
    )
    unknown = word & L.HMM_PFN_FLAGS & ~known
    if unknown:
        return Reading(
            "hmm",
            False,
            text,
            f"flag bits {unknown:#x} are no HMM_PFN_* flag of this configuration",
        )
    if word & L.HMM_PFN_ERROR and word & ~L.HMM_PFN_ERROR & ~L.HMM_PFN_INOUT_FLAGS:
        return Reading("hmm", False, text, "HMM_PFN_ERROR comes alone (hmm_pfns_fill)")
    if order not in (0, 9, 18):
        return Reading(
            "hmm",
            False,
            text,
            f"map order {order}: hmm_range_fault reports 0, 9 (PMD) or 18 (PUD) on x86-64",
        )
    # Series (e)'s walk marks a PMD-sized hole it collects as one compound
    # slot: MIGRATE | COMPOUND with the PMD order and no VALID (hmmsim.mm.hmm).
    compound_hole = getattr(L, "HMM_PFN_MIGRATE", 0) and getattr(L, "HMM_PFN_COMPOUND", 0)
    if compound_hole and word & compound_hole == compound_hole:
        pass
    elif order and not word & L.HMM_PFN_VALID:
        return Reading("hmm", False, text, "a map order without HMM_PFN_VALID")
    return Reading("hmm", True, text)


_READERS = {
    "pte": read_pte,
    "pmd": read_pmd,
    "softleaf": read_softleaf,
    "mpfn": read_mpfn,
    "hmm": read_hmm,
}


def explain(cfg: KConfig, word: int, as_: str | None = None) -> list[Reading]:
    """Every reading of `word` (or only `as_`), in KINDS order."""
    kinds = (ALIASES.get(as_, as_),) if as_ else KINDS
    return [_READERS[k](cfg, word) for k in kinds]


def format_explain(cfg: KConfig, word: int, as_: str | None = None) -> list[str]:
    """The lines `hmmsim explain` prints."""
    readings = explain(cfg, word, as_)
    out = [f"{word:#018x} = {word} under {cfg!r}"]
    shown = readings if as_ else [r for r in readings if r.plausible]
    for r in shown:
        note = "" if r.plausible else f"   (implausible: {r.why})"
        out.append(f"  {r.kind:<9}{r.text}{note}")
    if not as_:
        ruled_out = [r for r in readings if not r.plausible]
        if not shown:
            out.append("  no plausible reading in this configuration")
        for r in ruled_out:
            out.append(f"  not {r.kind}: {r.why}")
    return out


# --- the command -----------------------------------------------------------------------------
def series_options(f):
    """--feature (repeatable or comma-separated, hmmsim.cli_options), --kernel and
    --conflict-resolution, as every command that builds a kernel takes them."""
    import click

    from hmmsim.cli_options import conflict_option, feature_option
    from hmmsim.kconfig import KERNELS

    f = conflict_option(f)
    f = click.option(
        "--kernel",
        type=click.Choice(sorted(KERNELS)),
        default="mainline",
        show_default=True,
        help="Kernel profile: the pinned mainline or Linux 6.12 (docs/kernel-versions.md).",
    )(f)
    return feature_option()(f)


def cli_config(
    features: tuple[str, ...], kernel: str, conflict_resolution: str | None = None
) -> KConfig:
    """The KConfig of `demo` and `explain` (64 MiB of RAM); a configuration the
    series cannot build is a usage error (hmmsim.cli_options.build_config)."""
    from hmmsim.cli_options import build_config

    return build_config(features, kernel, conflict_resolution, ram_bytes=64 << 20)


def _explain_command():
    import click

    @click.command("explain")
    @click.argument("word")
    @click.option(
        "--as",
        "as_",
        type=click.Choice(["pte", "pmd", "swp", "softleaf", "mpfn", "hmm"]),
        default=None,
        help="Read the word only this way (default: every plausible reading).",
    )
    @series_options
    def explain_command(
        word: str,
        as_: str | None,
        features: tuple[str, ...],
        kernel: str,
        conflict_resolution: str | None,
    ) -> None:
        """Decode WORD as a PTE, PMD, softleaf (swp_entry_t), migrate PFN or HMM PFN.

        WORD is a 64-bit value in hex (0x...) or decimal. The decoding follows
        the seed-series switches and kernel profile: e.g. series (b) renumbers
        the swap types and (c) makes device-private PFNs offsets. Without
        --as, every plausible reading is shown, then the ruled-out ones with
        the reason.

        \b
        Examples:
          hmmsim explain 0xe7fff80004000002
          hmmsim explain 0xe7fff80004000002 --feature b --as pte
          hmmsim explain 0xc20000000000ffff --feature a,b,c --as hmm
        """
        try:
            w = parse_word(word)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="WORD") from None
        cfg = cli_config(features, kernel, conflict_resolution)
        for out in format_explain(cfg, w, as_):
            click.echo(out)

    return explain_command


explain_command = _explain_command()
