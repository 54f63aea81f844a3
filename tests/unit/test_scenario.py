"""The scenario language on the model: parser, patterns, RLE, interpreter (docs/scenarios.md)."""

from __future__ import annotations

import pytest

from hmmsim.scenario import ScenarioError, parse, run_text, scenario_config
from hmmsim.scenario.ctype import to_int, to_s64, to_u32, to_u64
from hmmsim.scenario.gen import generate
from hmmsim.scenario.interp import errno_token, pagemap_token
from hmmsim.scenario.lang import BUF, Fd
from hmmsim.scenario.patterns import mix64, pagehash, pat, pat_pages, rle, rle_bytes

M64 = (1 << 64) - 1
A = 0x100000000


# --- reference implementations in plain Python ints (independent of the NumPy code) -------------
def ref_mix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def ref_pagehash(page: bytes) -> str:
    words = [int.from_bytes(page[8 * w : 8 * w + 8], "little") for w in range(512)]
    if not any(words):
        return "z"
    total = sum(ref_mix64(v ^ ((w * 0x9E3779B97F4A7C15) & M64)) for w, v in enumerate(words))
    return f"{total & 0xFFFFFFFF:08x}"


def ref_pat_page(seed: int, va: int) -> bytes:
    return b"".join(
        ref_mix64((((seed & 0xFFFF) << 48) ^ (va + 8 * w)) & M64).to_bytes(8, "little")
        for w in range(512)
    )


def h(seed: int, va: int) -> str:
    """pagehash of the page a `store` with seed writes at va."""
    return ref_pagehash(ref_pat_page(seed, va))


def lines(text: str, **kw) -> list[str]:
    return run_text(text, **kw).lines


# --- patterns -------------------------------------------------------------------------------
def test_mix64_vectors():
    # the splitmix64 stream from state 0: mix64(k * golden) is its (k+1)-th output
    assert mix64(0) == 0xE220A8397B1DCDAF
    assert mix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4
    assert mix64(2 * 0x9E3779B97F4A7C15 & M64) == 0x06C45D188009454F
    for x in (1, 0xDEADBEEF, M64, 1 << 63, 0x600000000000):
        assert mix64(x) == ref_mix64(x)


def test_pat_and_pagehash_match_the_reference():
    for seed, va in ((0, BUF), (7, A + 0x4000), (0x1FFFF, 0x7FFFFFFFF000), (65535, A)):
        page = pat_pages(seed, va, 1)
        assert page == ref_pat_page(seed, va)
        assert pat(seed, va + 8) == int.from_bytes(page[8:16], "little")
        assert pagehash(page) == ref_pagehash(page)
    # only the low 16 bits of the seed count
    assert pat_pages(0x10007, A, 1) == pat_pages(7, A, 1)
    assert pagehash(bytes(4096)) == "z"
    one = bytearray(4096)
    one[4095] = 1
    assert pagehash(bytes(one)) == ref_pagehash(bytes(one)) != "z"
    assert pagehash(b"\xa5" * 4096) == ref_pagehash(b"\xa5" * 4096)
    with pytest.raises(ValueError):
        pagehash(b"\0" * 8)


def test_rle():
    assert rle([]) == "-"
    assert rle(["a"]) == "a"
    assert rle(["a", "a", "b", "a", "a", "a"]) == "a*2,b,a*3"
    assert rle(["z"] * 64) == "z*64"
    assert rle_bytes(b"") == "-"
    assert rle_bytes(b"\x02" * 16 + b"\x00" * 8 + b"\xff") == "02*16,00*8,ff"


def test_pagemap_tokens():
    assert pagemap_token(0) == "-"
    assert pagemap_token(1 << 63 | 1 << 56 | 1 << 55 | 0x1234) == "pxd"
    assert pagemap_token(1 << 62 | 28 | 5 << 5) == "s28"
    assert pagemap_token(1 << 63 | 1 << 61 | 1 << 57) == "pfw"
    assert pagemap_token(1 << 55) == "d"


def test_errno_tokens():
    assert errno_token(-22) == "-EINVAL"
    assert errno_token(-14) == "-EFAULT"
    assert errno_token(-600) == "-E600"


def test_c_conversions():
    assert to_u64(-1) == M64
    assert to_int(1 << 32) == 0
    assert to_int(0xFFFFFFFF) == -1
    assert to_int(-1) == -1
    assert to_u32(-1) == 0xFFFFFFFF
    assert to_s64(M64) == -1
    assert to_s64(1 << 63) == -(1 << 63)


# --- parser ---------------------------------------------------------------------------------------
def test_parse_converts_to_c_types():
    scn = parse(
        "# comment\n"
        "\n"
        "mmap 0x1000 -1 read|write private|anon  # trailing\n"
        "mmap 0 4096 read shared s3 -4096\n"
        "mmap 0 4096 read shared 4294967296\n"
        "ioctl s1 READ 0x1000 -1 ptr=7 seed=0x10\n"
        "ioctl s1 3221506048 0 0\n"
        "mremap 0x1000 4096 8192 maymove|fixed 0x2000\n"
        "mremap 0x1000 4096 8192 0\n"
        "fork hold\n"
        "\tfork\n"
        "\t\tstore 0x1000 1 -1\n"
        "\tend\n"
        "end\n"
        "reap\n"
    )
    ops = scn.ops
    assert [o.line for o in ops] == [3, 4, 5, 6, 7, 8, 9, 10, 15]
    assert ops[0].args == (0x1000, M64, 3, 0x22, Fd(None, -1), 0)
    assert ops[1].args[4] == Fd(3, -1) and ops[1].args[5] == -4096
    assert ops[2].args[4] == Fd(None, 0)  # 2^32 as an int fd is 0
    assert ops[3].args[3] == M64 and ops[3].opts == {"ptr": 7, "seed": 16}
    assert ops[4].args[1] == 3221506048
    assert ops[5].args[3] == 3 and ops[5].args[4] == 0x2000
    assert ops[6].args == (0x1000, 4096, 8192, 0, 0)
    fork = ops[7]
    assert fork.name == "fork" and fork.hold and len(fork.body) == 1
    inner = fork.body[0]
    assert not inner.hold and inner.line == 11 and inner.body[0].args == (0x1000, 1, M64)


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("mmap 0 4096 read\n", 1, "takes 4 to 6 arguments"),
        ("\nmunmap 0x1000 zz\n", 2, "expected an integer"),
        ("munmap 0x1000 18446744073709551616\n", 1, "outside"),
        ("munmap 0x1000 -9223372036854775809\n", 1, "outside"),
        ("mprotect 0 4096 read|bogus\n", 1, "unknown name 'bogus'"),
        ("frobnicate\n", 1, "unknown operation"),
        ("end\n", 1, "end without fork"),
        ("# x\nfork\nload 0x1000 1\n", 2, "fork without end"),
        ("fork now\nend\n", 1, "fork takes"),
        ("open s16 /tmp rdwr|tmpfile\n", 1, "slot"),
        ("open s0 /etc/passwd rdonly\n", 1, "PATH"),
        ("store 0x1001 1 1\n", 1, "aligned"),
        ("peek 0x1004\n", 1, "aligned"),
        ("load 0x1000 70000\n", 1, "NPAGES"),
        ("ioctl s0 FROB 0 1\n", 1, "unknown ioctl"),
        ("ioctl s0 READ 0 1 color=red\n", 1, "unknown ioctl option"),
        ("ioctl s0 READ 0 1 seed=1 seed=2\n", 1, "twice"),
        ("reap now\n", 1, "takes 0"),
        ("clear_refs 10\n", 1, "one digit"),
        ("clear_refs\n", 1, "clear_refs takes"),
    ],
)
def test_parse_errors_name_the_line(text, line, words):
    with pytest.raises(ScenarioError) as e:
        parse(text)
    assert str(e.value).startswith(f"line {line}: ")
    assert words in str(e.value)
    assert e.value.line == line


# --- interpreter ----------------------------------------------------------------------------------
def test_store_load_and_signals():
    out = lines(
        f"mmap {A:#x} 16384 read|write private|anon|fixed_noreplace\n"
        f"store {A:#x} 2 7\n"
        f"load {A:#x} 4\n"
        f"mprotect {A + 0x1000:#x} 4096 read\n"
        f"store {A:#x} 2 8\n"
        f"load {A:#x} 2\n"
        f"munmap {A + 0x2000:#x} 4096\n"
        f"load {A:#x} 4\n"
        f"poke {A + 0x3008:#x} 0x1234\n"
        f"peek {A + 0x3008:#x}\n"
        f"peek {A + 0x2000:#x}\n"
        f"poke {A + 0x1000:#x} 1\n"
        "peek 0x800000000000\n"
        "peek 0xffff800000000000\n"
    )
    h7 = [h(7, A), h(7, A + 0x1000)]
    assert out == [
        "1 mmap = 0x100000000",
        "2 store = ok",
        f"3 load = {h7[0]},{h7[1]},z*2",
        "4 mprotect = 0",
        # page 0 is stored with seed 8, page 1 is read-only: the store stops there
        "5 store = SIGSEGV ACCERR @1",
        f"6 load = {h(8, A)},{h7[1]}",
        "7 munmap = 0",
        f"8 load = {h(8, A)},{h7[1]} SIGSEGV MAPERR @2",
        "9 poke = ok",
        "10 peek = 0x1234",
        "11 peek = SIGSEGV MAPERR @0",
        "12 poke = SIGSEGV ACCERR @0",
        # non-canonical: #GP (si_code SI_KERNEL); the kernel half: a user fault (MAPERR)
        "13 peek = SIGSEGV KERNEL @0",
        "14 peek = SIGSEGV MAPERR @0",
    ]


def test_tmpfs_past_eof_is_sigbus_and_syscall_errors():
    out = lines(
        "open s0 /tmp rdwr|tmpfile\n"
        "ftruncate s0 4096\n"
        f"mmap {A:#x} 8192 read|write shared|fixed_noreplace s0 0\n"
        f"load {A:#x} 2\n"
        "open s1 /tmp/does-not-exist rdonly\n"
        "close s1\n"
        "ioctl s1 READ 0x100000000 1\n"
        f"mmap {A + 0x10000:#x} 4096 read shared|fixed_noreplace\n"
        f"munmap {A + 1:#x} 4096\n"
        f"mmap {A + 0x10000:#x} 0 read private|anon|fixed_noreplace\n"
        f"mmap {A:#x} 4096 read private|anon|fixed_noreplace\n"
        "close s0\n"
        "close s0\n"
        "open s2 /proc/self/pagemap rdonly\n"
        f"mmap {A + 0x10000:#x} 4096 read shared|fixed_noreplace s2 0\n"
    )
    assert out == [
        "1 open = ok",
        "2 ftruncate = 0",
        "3 mmap = 0x100000000",
        "4 load = z SIGBUS ADRERR @1",
        "5 open = -ENOENT",
        "6 close = -EBADF",
        "7 ioctl = -EBADF data=" + ref_pagehash(b"\xa5" * 4096),
        "8 mmap = -EBADF",
        "9 munmap = -EINVAL",
        "10 mmap = -EINVAL",
        "11 mmap = -EEXIST",
        "12 close = 0",
        "13 close = -EBADF",
        "14 open = ok",
        "15 mmap = -ENODEV",
    ]


def test_fork_blocks_hold_and_reap():
    out = lines(
        f"mmap {A:#x} 8192 read|write private|anon|fixed_noreplace\n"
        f"store {A:#x} 2 1\n"
        "reap\n"
        "fork\n"
        f"  store {A:#x} 1 2\n"
        f"  load {A:#x} 1\n"
        "end\n"
        f"load {A:#x} 1\n"
        "fork hold\n"
        f"  munmap {A:#x} 4096\n"
        "end\n"
        "fork hold\n"
        "end\n"
        f"load {A:#x} 2\n"
        "reap\n"
        "reap\n"
    )
    assert out == [
        "1 mmap = 0x100000000",
        "2 store = ok",
        "3 reap = -",
        "5 store = ok",
        f"6 load = {h(2, A)}",
        "4 fork = exit 0",
        f"8 load = {h(1, A)}",  # the child's store went to its own copy (COW)
        "10 munmap = 0",
        "9 fork = held",
        "12 fork = held",
        f"14 load = {h(1, A)},{h(1, A + 0x1000)}",
        "15 reap = exit 0,exit 0",
        "16 reap = -",
    ]


def test_ioctl_write_read_and_buffer_fill():
    # WRITE copies pat(seed, BUF + ...) from the buffer into the range; READ copies
    # the range back into the buffer; a failed call still prints the buffer (0xa5 fill)
    poison = ref_pagehash(b"\xa5" * 4096)
    out = lines(
        f"mmap {A:#x} 8192 read|write private|anon|fixed_noreplace\n"
        "open s0 /dev/hmm_dmirror0 rdwr\n"
        f"ioctl s0 WRITE {A:#x} 2 seed=5\n"
        f"load {A:#x} 2\n"
        f"ioctl s0 READ {A:#x} 2\n"
        f"ioctl s0 READ {A:#x} 0\n"
        f"ioctl s0 READ {A:#x} 0x10000000000000\n"
        f"ioctl s0 READ {A + 1:#x} 1\n"
        f"ioctl s0 SNAPSHOT {A:#x} 3\n"
        f"ioctl s0 READ {A:#x} 2 ptr=0\n"
        f"ioctl s0 FLAGS {A:#x} 0\n"
        f"ioctl s0 0x1234 {A:#x} 1\n"
    )
    hw = [h(5, BUF), h(5, BUF + 0x1000)]
    assert out == [
        "1 mmap = 0x100000000",
        "2 open = ok",
        "3 ioctl = 0 cpages=2 faults=1",
        f"4 load = {hw[0]},{hw[1]}",
        f"5 ioctl = 0 cpages=2 faults=0 data={hw[0]},{hw[1]}",
        # npages 0: addr >= addr + 0 is -EINVAL, and nothing of the buffer is filled
        "6 ioctl = -EINVAL data=-",
        # 2^52 pages: npages << PAGE_SHIFT wraps to 0 in u64
        f"7 ioctl = -EINVAL data={poison}*64",
        f"8 ioctl = -EINVAL data={poison}",
        # two pages mapped read|write in the mirror (CPU writable), one past the vma
        "9 ioctl = 0 cpages=3 faults=0 snap=02*2,ff",
        "10 ioctl = -EFAULT",
        "11 ioctl = -EINVAL",
        "12 ioctl = -EINVAL",
    ]


def test_pagemap_after_stores_and_migration():
    out = lines(
        f"mmap {A:#x} 8192 read|write private|anon|fixed_noreplace\n"
        f"store {A:#x} 2 1\n"
        f"pagemap {A:#x} 2\n"
        "open s0 /dev/hmm_dmirror0 rdwr\n"
        f"ioctl s0 MIGRATE_TO_DEV {A + 0x1000:#x} 1\n"
        f"pagemap {A + 0x1000:#x} 1\n"
        f"load {A:#x} 2\n"
        f"pagemap {A:#x} 2\n"
    )
    assert out[2] == "3 pagemap = pxd*2"
    assert out[4] == f"5 ioctl = 0 cpages=1 faults=0 data={h(1, A + 0x1000)}"
    # a device-private entry: swapped (bit 62) with its swap type, soft-dirty
    # kept, never "exclusively mapped" (PM_MMAP_EXCLUSIVE needs PM_PRESENT)
    assert out[5].startswith("6 pagemap = s") and out[5].endswith("d")
    assert "x" not in out[5] and "f" not in out[5]
    assert out[6] == f"7 load = {h(1, A)},{h(1, A + 0x1000)}"
    assert out[7] == "8 pagemap = pxd*2"


def test_clear_refs_clears_soft_dirty_and_a_write_sets_it():
    out = lines(
        f"mmap {A:#x} 8192 read|write private|anon|fixed_noreplace\n"
        f"store {A:#x} 2 1\n"
        "clear_refs 4\n"
        f"pagemap {A:#x} 2\n"
        f"store {A:#x} 1 2\n"
        f"pagemap {A:#x} 2\n"
        "clear_refs 9\n"
    )
    assert out[2] == "3 clear_refs = 2"
    assert out[3] == "4 pagemap = px*2"
    assert out[5] == "6 pagemap = pxd,px"
    assert out[6] == "7 clear_refs = -EINVAL"


def test_errors_are_lines_never_tracebacks(monkeypatch):
    from hmmsim import userspace

    def boom(self, *a, **kw):
        raise ZeroDivisionError("model gap")

    monkeypatch.setattr(userspace.Process, "mprotect", boom)
    res = run_text(f"mmap {A:#x} 4096 read private|anon|fixed_noreplace\nmprotect 0 0 read\nreap\n")
    assert res.lines == ["1 mmap = 0x100000000", "2 mprotect ERROR ZeroDivisionError: model gap"]


def test_oops_ends_the_scenario(monkeypatch):
    from hmmsim import userspace
    from hmmsim.bug import KernelOops

    def oops(self, *a, **kw):
        raise KernelOops("dmirror_do_read", "no linear mapping")

    monkeypatch.setattr(userspace.Process, "ioctl", oops)
    res = run_text(
        "open s0 /dev/hmm_dmirror0 rdwr\n"
        "fork\n"
        "  ioctl s0 READ 0x100000000 1\n"
        "  load 0x100000000 1\n"
        "end\n"
        "load 0x100000000 1\n"
    )
    assert res.lines == ["1 open = ok", "3 ioctl OOPS dmirror_do_read"]
    assert res.events == ["! OOPS dmirror_do_read"]


def test_check_invariants_and_profiles():
    cfg, used = scenario_config(kernel="6.12")
    assert used in ("6.12", "mainline")
    text = f"mmap {A:#x} 8192 read|write private|anon|fixed_noreplace\nstore {A:#x} 2 3\n"
    assert lines(text, config=cfg, check_invariants=True) == lines(text)


def test_generator_is_deterministic_and_parses():
    for seed in range(40):
        text = generate(seed)
        assert text == generate(seed)
        assert text.startswith(f"# generated by `hmmsim scenario gen`: seed={seed} ")
        n = sum(1 for ln in text.splitlines()[1:] if ln.strip() and ln.strip() != "end")
        assert 10 <= n <= 45
        parse(text)
    assert generate(1) != generate(2)


def test_slots_failed_open_keeps_the_slot_close_clears_it():
    out = lines(
        f"mmap {A:#x} 4096 read|write private|anon|fixed_noreplace\n"
        "open s3 /dev/hmm_dmirror0 rdwr\n"
        "open s3 /tmp/nothing-here rdonly\n"
        f"ioctl s3 MIGRATE_TO_SYS {A:#x} 1\n"
        "fork\n"
        "  close s3\n"
        "  close s3\n"
        "end\n"
        f"ioctl s3 MIGRATE_TO_SYS {A:#x} 1\n"
    )
    assert out == [
        "1 mmap = 0x100000000",
        "2 open = ok",
        "3 open = -ENOENT",
        "4 ioctl = 0 cpages=0 faults=0",  # s3 still names the dmirror
        "6 close = 0",
        "7 close = -EBADF",
        "5 fork = exit 0",
        "9 ioctl = 0 cpages=0 faults=0",  # the child's close was its own
    ]


def test_hostile_arguments_never_break_the_interpreter():
    """Every operation with hostile values prints one line and no model ERROR."""
    text = (
        "mmap 0 -1 read|write private|anon\n"
        "mmap 0xffffffffffff0000 4096 read private|anon|fixed\n"
        "mmap 0x100000000 4096 -1 -1 - -4096\n"
        "munmap -1 -1\n"
        "mprotect 0x100000000 -4096 0x7fffffff\n"
        "madvise 0x100000000 4096 -1\n"
        "mremap 0x100000000 -1 -4096 maymove|fixed|dontunmap 0x8000000000000000\n"
        "store 0xfffffffffffff000 2 1\n"
        "load 0x7ffffffff000 2\n"
        "pagemap 0xffffffffffffffff 4\n"
        "open s0 /tmp rdwr|tmpfile\n"
        "ftruncate s0 -1\n"
        "ftruncate s0 0x7fffffffffffffff\n"
        "open s1 /dev/hmm_dmirror3 wronly\n"
        "ioctl s1 WRITE 0xfffffffffffff000 1 seed=-1\n"
        "ioctl s1 SNAPSHOT 0 0x8000000000000000 ptr=0xffffffffffffffff\n"
        "ioctl s1 EXCLUSIVE 0x100000000 -1\n"
        "ioctl s1 CHECK_EXCLUSIVE 0x600000000000 64\n"
        "ioctl s1 -1 0 1\n"
        "ioctl s0 READ 0x100000000 1\n"
        "ioctl s1 FLAGS 0x100000000 0xffffffff\n"
        "ioctl s1 MIGRATE_TO_DEV 0x600000000000 64\n"
        "ioctl s1 MIGRATE_TO_SYS 0x600000000000 64\n"
        "ioctl s1 RELEASE 0x600000000000 64\n"
        "close s15\n"
    )
    res = run_text(text)
    assert len(res.lines) == 25
    assert [int(ln.split()[0]) for ln in res.lines] == list(range(1, 26))
    assert not [ln for ln in res.lines + res.events if "ERROR" in ln]
    assert res.lines[7] == "8 store = SIGSEGV MAPERR @0"
    assert res.lines[8] == "9 load = - SIGSEGV MAPERR @0"  # no page before the fault


def test_warning_events_name_the_function_in_the_kernels_rip():
    """dmirror_do_fault is inlined into dmirror_fault in the oracle's build (gen/0304)."""
    from hmmsim.scenario.interp import Interpreter

    it = Interpreter(scenario_config()[0])
    it.k.warn("dmirror_do_fault: write requested but not granted")
    it.k.warn("dmirror_migrate_to_device: other")
    assert it._finish().events == [
        "! WARNING dmirror_fault",
        "! WARNING dmirror_migrate_to_device",
    ]
