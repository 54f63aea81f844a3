"""vm_area_struct flags, fault flags and fault results.

Models: include/linux/mm.h and include/linux/mm_types.h (enum fault_flag,
vm_fault_t / enum vm_fault_reason) @ torvalds/linux 0eaed89c18ae.
"""

VM_NONE = 0x00000000
VM_READ = 0x00000001
VM_WRITE = 0x00000002
VM_EXEC = 0x00000004
VM_SHARED = 0x00000008
VM_MAYREAD = 0x00000010
VM_MAYWRITE = 0x00000020
VM_MAYEXEC = 0x00000040
VM_MAYSHARE = 0x00000080
VM_GROWSDOWN = 0x00000100
VM_UFFD_MISSING = 0x00000200
VM_PFNMAP = 0x00000400
VM_LOCKED = 0x00002000
VM_IO = 0x00004000
VM_SEQ_READ = 0x00008000
VM_RAND_READ = 0x00010000
VM_DONTCOPY = 0x00020000
VM_DONTEXPAND = 0x00040000
VM_ACCOUNT = 0x00100000
VM_NORESERVE = 0x00200000
VM_HUGETLB = 0x00400000
VM_WIPEONFORK = 0x02000000
VM_DONTDUMP = 0x04000000
VM_SOFTDIRTY = 0x08000000
VM_MIXEDMAP = 0x10000000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
VM_MERGEABLE = 0x80000000

VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC
#: vmas whose pages have no struct page the core may touch.
VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP

# enum fault_flag
FAULT_FLAG_WRITE = 1 << 0
FAULT_FLAG_MKWRITE = 1 << 1
FAULT_FLAG_ALLOW_RETRY = 1 << 2
FAULT_FLAG_RETRY_NOWAIT = 1 << 3
FAULT_FLAG_KILLABLE = 1 << 4
FAULT_FLAG_TRIED = 1 << 5
FAULT_FLAG_USER = 1 << 6
FAULT_FLAG_REMOTE = 1 << 7
FAULT_FLAG_INSTRUCTION = 1 << 8
FAULT_FLAG_INTERRUPTIBLE = 1 << 9
FAULT_FLAG_UNSHARE = 1 << 10
FAULT_FLAG_ORIG_PTE_VALID = 1 << 11
FAULT_FLAG_VMA_LOCK = 1 << 12

# enum vm_fault_reason
VM_FAULT_OOM = 0x000001
VM_FAULT_SIGBUS = 0x000002
VM_FAULT_MAJOR = 0x000004
VM_FAULT_HWPOISON = 0x000010
VM_FAULT_HWPOISON_LARGE = 0x000020
VM_FAULT_SIGSEGV = 0x000040
VM_FAULT_NOPAGE = 0x000100
VM_FAULT_LOCKED = 0x000200
VM_FAULT_RETRY = 0x000400
VM_FAULT_FALLBACK = 0x000800
VM_FAULT_DONE_COW = 0x001000
VM_FAULT_NEEDDSYNC = 0x002000
VM_FAULT_COMPLETED = 0x004000
VM_FAULT_HINDEX_MASK = 0x0F0000
VM_FAULT_ERROR = (
    VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_HWPOISON | VM_FAULT_HWPOISON_LARGE
)

#: a FOLL_PIN reference counts this many references on a small folio
#: (include/linux/mm.h; mm/gup.py applies it)
GUP_PIN_COUNTING_BIAS = 1 << 10

_VM_FAULT_NAMES = {
    v: k for k, v in dict(globals()).items() if k.startswith("VM_FAULT_") and k != "VM_FAULT_ERROR"
}


def vm_fault_names(ret: int) -> str:
    """'VM_FAULT_SIGBUS|VM_FAULT_MAJOR' for a vm_fault_t, '0' for success."""
    if not ret:
        return "0"
    return "|".join(n for v, n in sorted(_VM_FAULT_NAMES.items()) if ret & v and v != 0x0F0000)


_VM_FLAG_LETTERS = ((VM_READ, "r"), (VM_WRITE, "w"), (VM_EXEC, "x"))


def vm_flags_str(flags: int) -> str:
    """'rw-p' style, as /proc/PID/maps prints a vma's access and sharing."""
    s = "".join(c if flags & f else "-" for f, c in _VM_FLAG_LETTERS)
    return s + ("s" if flags & VM_MAYSHARE else "p")
