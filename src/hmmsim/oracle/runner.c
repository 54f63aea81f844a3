/*
 * hmmsim oracle runner: interprets a scenario (docs/scenarios.md, language
 * version 1) on the running Linux kernel and prints one line per operation,
 * byte for byte what `hmmsim run` prints on the model.
 *
 * Build: gcc -static -O2 -o runner runner.c
 * Usage: runner FILE.scn        (output on stdout; errors in the file: exit 2)
 *
 * Output discipline: before an operation runs, "LINE OP " is written with
 * write(2); after it, the result and "\n". If the kernel oopses inside the
 * operation the process dies there and the partial line names the operation;
 * the oracle driver completes it as "OOPS FUNC" from the kernel log. When a
 * child dies by a signal with its line unfinished, the parent ends that line
 * with "\n" before printing its own (stdout must be a regular file for that
 * check; elsewhere it is skipped).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

typedef uint64_t u64;

#define PAGE_SIZE 4096UL
#define BUF_ADDR 0x600000000000UL
#define BUF_PAGES 64UL
#define NSLOTS 16
#define MAXARGS 8

/* ---- lib/test_hmm_uapi.h (the request numbers of the dmirror driver) ---- */
struct hmm_dmirror_cmd {
	u64 addr;
	u64 ptr;
	u64 npages;
	u64 cpages;
	u64 faults;
};
#define HMM_REQ(nr) _IOWR('H', nr, struct hmm_dmirror_cmd)

/* ---- errno names: the first name of each number in the uapi errno-base.h and
 * errno.h (hmmsim.scenario.interp.ERRNO_NAMES reads the same); others print -E<n> ---- */
static const struct { int num; const char *name; } errnames[] = {
	{1, "EPERM"}, {2, "ENOENT"}, {3, "ESRCH"}, {4, "EINTR"}, {5, "EIO"}, {6, "ENXIO"}, {7,
	"E2BIG"}, {8, "ENOEXEC"}, {9, "EBADF"}, {10, "ECHILD"}, {11, "EAGAIN"}, {12, "ENOMEM"},
	{13, "EACCES"}, {14, "EFAULT"}, {15, "ENOTBLK"}, {16, "EBUSY"}, {17, "EEXIST"}, {18,
	"EXDEV"}, {19, "ENODEV"}, {20, "ENOTDIR"}, {21, "EISDIR"}, {22, "EINVAL"}, {23,
	"ENFILE"}, {24, "EMFILE"}, {25, "ENOTTY"}, {26, "ETXTBSY"}, {27, "EFBIG"}, {28,
	"ENOSPC"}, {29, "ESPIPE"}, {30, "EROFS"}, {31, "EMLINK"}, {32, "EPIPE"}, {33, "EDOM"},
	{34, "ERANGE"}, {35, "EDEADLK"}, {36, "ENAMETOOLONG"}, {37, "ENOLCK"}, {38, "ENOSYS"},
	{39, "ENOTEMPTY"}, {40, "ELOOP"}, {42, "ENOMSG"}, {43, "EIDRM"}, {44, "ECHRNG"}, {45,
	"EL2NSYNC"}, {46, "EL3HLT"}, {47, "EL3RST"}, {48, "ELNRNG"}, {49, "EUNATCH"}, {50,
	"ENOCSI"}, {51, "EL2HLT"}, {52, "EBADE"}, {53, "EBADR"}, {54, "EXFULL"}, {55, "ENOANO"},
	{56, "EBADRQC"}, {57, "EBADSLT"}, {59, "EBFONT"}, {60, "ENOSTR"}, {61, "ENODATA"}, {62,
	"ETIME"}, {63, "ENOSR"}, {64, "ENONET"}, {65, "ENOPKG"}, {66, "EREMOTE"}, {67,
	"ENOLINK"}, {68, "EADV"}, {69, "ESRMNT"}, {70, "ECOMM"}, {71, "EPROTO"}, {72,
	"EMULTIHOP"}, {73, "EDOTDOT"}, {74, "EBADMSG"}, {75, "EOVERFLOW"}, {76, "ENOTUNIQ"},
	{77, "EBADFD"}, {78, "EREMCHG"}, {79, "ELIBACC"}, {80, "ELIBBAD"}, {81, "ELIBSCN"}, {82,
	"ELIBMAX"}, {83, "ELIBEXEC"}, {84, "EILSEQ"}, {85, "ERESTART"}, {86, "ESTRPIPE"}, {87,
	"EUSERS"}, {88, "ENOTSOCK"}, {89, "EDESTADDRREQ"}, {90, "EMSGSIZE"}, {91, "EPROTOTYPE"},
	{92, "ENOPROTOOPT"}, {93, "EPROTONOSUPPORT"}, {94, "ESOCKTNOSUPPORT"}, {95,
	"EOPNOTSUPP"}, {96, "EPFNOSUPPORT"}, {97, "EAFNOSUPPORT"}, {98, "EADDRINUSE"}, {99,
	"EADDRNOTAVAIL"}, {100, "ENETDOWN"}, {101, "ENETUNREACH"}, {102, "ENETRESET"}, {103,
	"ECONNABORTED"}, {104, "ECONNRESET"}, {105, "ENOBUFS"}, {106, "EISCONN"}, {107,
	"ENOTCONN"}, {108, "ESHUTDOWN"}, {109, "ETOOMANYREFS"}, {110, "ETIMEDOUT"}, {111,
	"ECONNREFUSED"}, {112, "EHOSTDOWN"}, {113, "EHOSTUNREACH"}, {114, "EALREADY"}, {115,
	"EINPROGRESS"}, {116, "ESTALE"}, {117, "EUCLEAN"}, {118, "ENOTNAM"}, {119, "ENAVAIL"},
	{120, "EISNAM"}, {121, "EREMOTEIO"}, {122, "EDQUOT"}, {123, "ENOMEDIUM"}, {124,
	"EMEDIUMTYPE"}, {125, "ECANCELED"}, {126, "ENOKEY"}, {127, "EKEYEXPIRED"}, {128,
	"EKEYREVOKED"}, {129, "EKEYREJECTED"}, {130, "EOWNERDEAD"}, {131, "ENOTRECOVERABLE"},
	{132, "ERFKILL"}, {133, "EHWPOISON"}
};

/* ---- symbolic names ---- */
struct sym { const char *name; u64 val; };

static const struct sym prot_syms[] = {
	{"none", 0}, {"read", 1}, {"write", 2}, {"exec", 4}, {NULL, 0}};
static const struct sym map_syms[] = {
	{"shared", 0x01}, {"private", 0x02}, {"shared_validate", 0x03},
	{"anon", 0x20}, {"fixed", 0x10}, {"fixed_noreplace", 0x100000},
	{"populate", 0x8000}, {"noreserve", 0x4000}, {NULL, 0}};
static const struct sym advice_syms[] = {
	{"normal", 0}, {"random", 1}, {"sequential", 2}, {"willneed", 3},
	{"dontneed", 4}, {"free", 8}, {"remove", 9}, {"dontfork", 10},
	{"dofork", 11}, {"hugepage", 14}, {"nohugepage", 15}, {"collapse", 25},
	{NULL, 0}};
static const struct sym mremap_syms[] = {
	{"maymove", 1}, {"fixed", 2}, {"dontunmap", 4}, {NULL, 0}};
static const struct sym open_syms[] = {
	{"rdonly", 00}, {"wronly", 01}, {"rdwr", 02}, {"creat", 0100},
	{"tmpfile", 020000000 | 0200000}, {NULL, 0}};
static const struct sym ioctl_syms[] = {
	{"READ", HMM_REQ(0x00)}, {"WRITE", HMM_REQ(0x01)},
	{"MIGRATE_TO_DEV", HMM_REQ(0x02)}, {"MIGRATE_TO_SYS", HMM_REQ(0x03)},
	{"SNAPSHOT", HMM_REQ(0x04)}, {"EXCLUSIVE", HMM_REQ(0x05)},
	{"CHECK_EXCLUSIVE", HMM_REQ(0x06)}, {"RELEASE", HMM_REQ(0x07)},
	{"FLAGS", HMM_REQ(0x08)}, {NULL, 0}};

/* ---- parsed program ---- */
enum opkind {
	OP_MMAP, OP_MUNMAP, OP_MPROTECT, OP_MADVISE, OP_MREMAP, OP_STORE,
	OP_LOAD, OP_POKE, OP_PEEK, OP_PAGEMAP, OP_CLEAR_REFS, OP_OPEN, OP_CLOSE, OP_FTRUNCATE,
	OP_IOCTL, OP_FORK, OP_END, OP_REAP,
};

struct op {
	enum opkind kind;
	int line;
	const char *name;
	int nargs;
	u64 a[MAXARGS];
	int fd_slot;        /* mmap FD / open/close/ftruncate/ioctl slot, -1 if none */
	int have_fd;        /* mmap: FD given */
	int have_off;       /* mmap: OFF given; mremap: NEW given */
	char *path;         /* open */
	int ptr_buf;        /* ioctl: ptr=buf (default) */
	int have_seed;      /* ioctl */
	int hold;           /* fork hold */
	int match;          /* fork: index of its end; end: index of its fork */
};

static struct op *ops;
static int nops;
static const char *scn_path;

static void die_parse(int line, const char *msg, const char *tok)
{
	fprintf(stderr, "runner: %s:%d: %s%s%s\n", scn_path, line, msg,
		tok ? ": " : "", tok ? tok : "");
	exit(2);
}

/* An integer literal in [-2^63, 2^64), as its 64-bit two's complement. */
static int parse_int(const char *s, u64 *out)
{
	int neg = 0;
	u64 v = 0;
	const char *p = s;

	if (*p == '-') {
		neg = 1;
		p++;
	}
	if (!*p)
		return 0;
	if (!neg && p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
		p += 2;
		if (!*p)
			return 0;
		for (; *p; p++) {
			int d;
			if (*p >= '0' && *p <= '9') d = *p - '0';
			else if (*p >= 'a' && *p <= 'f') d = *p - 'a' + 10;
			else if (*p >= 'A' && *p <= 'F') d = *p - 'A' + 10;
			else return 0;
			if (v >> 60)
				return 0;
			v = v * 16 + d;
		}
		*out = v;
		return 1;
	}
	for (; *p; p++) {
		if (*p < '0' || *p > '9')
			return 0;
		u64 d = *p - '0';
		if (v > (UINT64_MAX - d) / 10)
			return 0;
		v = v * 10 + d;
	}
	if (neg) {
		if (v > (1ULL << 63))
			return 0;
		v = (u64)0 - v;
	}
	*out = v;
	return 1;
}

static u64 parse_num(int line, const char *tok)
{
	u64 v;
	if (!parse_int(tok, &v))
		die_parse(line, "bad integer", tok);
	return v;
}

/* names joined by '|', each a name from the table or an integer */
static u64 parse_sym(int line, const char *tok, const struct sym *tab)
{
	char buf[256];
	u64 v = 0;
	if (strlen(tok) >= sizeof(buf))
		die_parse(line, "symbol too long", tok);
	strcpy(buf, tok);
	char *save, *part;
	for (part = strtok_r(buf, "|", &save); part; part = strtok_r(NULL, "|", &save)) {
		const struct sym *s;
		u64 x;
		for (s = tab; s->name; s++)
			if (!strcmp(s->name, part))
				break;
		if (s->name)
			v |= s->val;
		else if (parse_int(part, &x))
			v |= x;
		else
			die_parse(line, "unknown name", part);
	}
	if (tok[0] == '|' || !tok[0] || tok[strlen(tok) - 1] == '|' || strstr(tok, "||"))
		die_parse(line, "bad symbol list", tok);
	return v;
}

static int parse_slot(int line, const char *tok)
{
	u64 v;
	if (tok[0] != 's' || !parse_int(tok + 1, &v) || v >= NSLOTS || tok[1] == '-')
		die_parse(line, "bad slot (s0..s15)", tok);
	return (int)v;
}

static void need(int line, int ntok, int lo, int hi, const char *op)
{
	if (ntok - 1 < lo || ntok - 1 > hi)
		die_parse(line, "wrong number of arguments", op);
}

static void parse_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *linebuf = NULL;
	size_t cap = 0;
	int lineno = 0, cap_ops = 0;
	int stack[256], depth = 0;

	if (!f) {
		fprintf(stderr, "runner: cannot open %s: %s\n", path, strerror(errno));
		exit(2);
	}
	while (getline(&linebuf, &cap, f) >= 0) {
		char *tok[32];
		int ntok = 0;
		char *p, *save;

		lineno++;
		p = strchr(linebuf, '#');
		if (p)
			*p = 0;
		for (p = strtok_r(linebuf, " \t\r\n", &save); p; p = strtok_r(NULL, " \t\r\n", &save)) {
			if (ntok == 32)
				die_parse(lineno, "too many tokens", NULL);
			tok[ntok++] = p;
		}
		if (!ntok)
			continue;
		if (nops == cap_ops) {
			cap_ops = cap_ops ? cap_ops * 2 : 64;
			ops = realloc(ops, cap_ops * sizeof(*ops));
		}
		struct op *o = &ops[nops];
		memset(o, 0, sizeof(*o));
		o->line = lineno;
		o->name = strdup(tok[0]);
		o->fd_slot = -1;
		o->ptr_buf = 1;
		const char *n = tok[0];

		if (!strcmp(n, "mmap")) {
			need(lineno, ntok, 4, 6, n);
			o->kind = OP_MMAP;
			o->a[0] = parse_num(lineno, tok[1]);
			o->a[1] = parse_num(lineno, tok[2]);
			o->a[2] = parse_sym(lineno, tok[3], prot_syms);
			o->a[3] = parse_sym(lineno, tok[4], map_syms);
			o->a[4] = (u64)-1;
			o->a[5] = 0;
			if (ntok > 5) {
				o->have_fd = 1;
				if (tok[5][0] == 's')
					o->fd_slot = parse_slot(lineno, tok[5]);
				else if (!strcmp(tok[5], "-"))
					o->a[4] = (u64)-1;
				else
					o->a[4] = parse_num(lineno, tok[5]);
			}
			if (ntok > 6) {
				o->have_off = 1;
				o->a[5] = parse_num(lineno, tok[6]);
			}
		} else if (!strcmp(n, "munmap")) {
			need(lineno, ntok, 2, 2, n);
			o->kind = OP_MUNMAP;
			o->a[0] = parse_num(lineno, tok[1]);
			o->a[1] = parse_num(lineno, tok[2]);
		} else if (!strcmp(n, "mprotect")) {
			need(lineno, ntok, 3, 3, n);
			o->kind = OP_MPROTECT;
			o->a[0] = parse_num(lineno, tok[1]);
			o->a[1] = parse_num(lineno, tok[2]);
			o->a[2] = parse_sym(lineno, tok[3], prot_syms);
		} else if (!strcmp(n, "madvise")) {
			need(lineno, ntok, 3, 3, n);
			o->kind = OP_MADVISE;
			o->a[0] = parse_num(lineno, tok[1]);
			o->a[1] = parse_num(lineno, tok[2]);
			o->a[2] = parse_sym(lineno, tok[3], advice_syms);
		} else if (!strcmp(n, "mremap")) {
			need(lineno, ntok, 4, 5, n);
			o->kind = OP_MREMAP;
			o->a[0] = parse_num(lineno, tok[1]);
			o->a[1] = parse_num(lineno, tok[2]);
			o->a[2] = parse_num(lineno, tok[3]);
			o->a[3] = parse_sym(lineno, tok[4], mremap_syms);
			o->a[4] = ntok > 5 ? parse_num(lineno, tok[5]) : 0;
		} else if (!strcmp(n, "store")) {
			need(lineno, ntok, 3, 3, n);
			o->kind = OP_STORE;
			o->a[0] = parse_num(lineno, tok[1]);
			o->a[1] = parse_num(lineno, tok[2]);
			o->a[2] = parse_num(lineno, tok[3]);
		} else if (!strcmp(n, "load")) {
			need(lineno, ntok, 2, 2, n);
			o->kind = OP_LOAD;
			o->a[0] = parse_num(lineno, tok[1]);
			o->a[1] = parse_num(lineno, tok[2]);
		} else if (!strcmp(n, "poke")) {
			need(lineno, ntok, 2, 2, n);
			o->kind = OP_POKE;
			o->a[0] = parse_num(lineno, tok[1]);
			o->a[1] = parse_num(lineno, tok[2]);
		} else if (!strcmp(n, "peek")) {
			need(lineno, ntok, 1, 1, n);
			o->kind = OP_PEEK;
			o->a[0] = parse_num(lineno, tok[1]);
		} else if (!strcmp(n, "pagemap")) {
			need(lineno, ntok, 2, 2, n);
			o->kind = OP_PAGEMAP;
			o->a[0] = parse_num(lineno, tok[1]);
			o->a[1] = parse_num(lineno, tok[2]);
		} else if (!strcmp(n, "clear_refs")) {
			need(lineno, ntok, 1, 1, n);
			o->kind = OP_CLEAR_REFS;
			o->a[0] = parse_num(lineno, tok[1]);
			if (o->a[0] > 9)
				die_parse(lineno, "clear_refs TYPE: expected one digit", tok[1]);
		} else if (!strcmp(n, "open")) {
			need(lineno, ntok, 3, 3, n);
			o->kind = OP_OPEN;
			o->fd_slot = parse_slot(lineno, tok[1]);
			o->path = strdup(tok[2]);
			o->a[0] = parse_sym(lineno, tok[3], open_syms);
		} else if (!strcmp(n, "close")) {
			need(lineno, ntok, 1, 1, n);
			o->kind = OP_CLOSE;
			o->fd_slot = parse_slot(lineno, tok[1]);
		} else if (!strcmp(n, "ftruncate")) {
			need(lineno, ntok, 2, 2, n);
			o->kind = OP_FTRUNCATE;
			o->fd_slot = parse_slot(lineno, tok[1]);
			o->a[0] = parse_num(lineno, tok[2]);
		} else if (!strcmp(n, "ioctl")) {
			need(lineno, ntok, 4, 6, n);
			o->kind = OP_IOCTL;
			o->fd_slot = parse_slot(lineno, tok[1]);
			o->a[0] = parse_sym(lineno, tok[2], ioctl_syms);
			o->a[1] = parse_num(lineno, tok[3]);
			o->a[2] = parse_num(lineno, tok[4]);
			o->a[3] = BUF_ADDR;
			o->a[4] = 0;
			for (int i = 5; i < ntok; i++) {
				if (!strncmp(tok[i], "ptr=", 4)) {
					if (!strcmp(tok[i] + 4, "buf")) {
						o->ptr_buf = 1;
						o->a[3] = BUF_ADDR;
					} else {
						o->ptr_buf = 0;
						o->a[3] = parse_num(lineno, tok[i] + 4);
					}
				} else if (!strncmp(tok[i], "seed=", 5)) {
					o->have_seed = 1;
					o->a[4] = parse_num(lineno, tok[i] + 5);
				} else {
					die_parse(lineno, "unknown ioctl option", tok[i]);
				}
			}
		} else if (!strcmp(n, "fork")) {
			o->kind = OP_FORK;
			if (ntok == 2 && !strcmp(tok[1], "hold"))
				o->hold = 1;
			else
				need(lineno, ntok, 0, 0, n);
			if (depth == 256)
				die_parse(lineno, "fork blocks nested too deep", NULL);
			stack[depth++] = nops;
		} else if (!strcmp(n, "end")) {
			need(lineno, ntok, 0, 0, n);
			o->kind = OP_END;
			if (!depth)
				die_parse(lineno, "end without fork", NULL);
			o->match = stack[--depth];
			ops[o->match].match = nops;
		} else if (!strcmp(n, "reap")) {
			need(lineno, ntok, 0, 0, n);
			o->kind = OP_REAP;
		} else {
			die_parse(lineno, "unknown operation", n);
		}
		nops++;
	}
	if (depth)
		die_parse(ops[stack[depth - 1]].line, "fork without end", NULL);
	free(linebuf);
	fclose(f);
}

/* ---- output ---- */
static char out[1 << 16];
static size_t outlen;
static char *big;       /* for long results (snap=) */
static size_t biglen, bigcap;

static void emit_raw(const char *s, size_t n)
{
	while (n) {
		ssize_t w = write(1, s, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			_exit(3);
		}
		s += w;
		n -= w;
	}
}

static void res_add(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void res_add(const char *fmt, ...)
{
	va_list ap;
	char tmp[512];
	int n;
	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (biglen + n + 1 > bigcap) {
		bigcap = (biglen + n + 1) * 2;
		big = realloc(big, bigcap);
	}
	memcpy(big + biglen, tmp, n);
	biglen += n;
}

/*
 * The mirror (fd $HMMSIM_MIRROR_FD, the guest's console): whole lines only,
 * "~> LINE OP" when an operation starts and "~= LINE OP RESULT" when it ends,
 * so a run that never finishes (a hang after an oops) still shows its lines.
 */
static int mirror_fd = -1;

static void mirror(const char *tag, const char *a, size_t alen, const char *b, size_t blen)
{
	char *m;
	size_t n = 2 + alen + blen + 1;
	if (mirror_fd < 0 || !(m = malloc(n)))
		return;
	memcpy(m, tag, 2);
	memcpy(m + 2, a, alen);
	memcpy(m + 2 + alen, b, blen);
	m[n - 1] = '\n';
	if (write(mirror_fd, m, n) < 0) {
		/* the mirror is best effort */
	}
	free(m);
}

static void begin_op(const struct op *o)
{
	outlen = snprintf(out, sizeof(out), "%d %s ", o->line, o->name);
	mirror("~>", out, outlen - 1, "", 0);
	emit_raw(out, outlen);
	biglen = 0;
}

static void end_op(void)
{
	mirror("~=", out, outlen, big, biglen);
	res_add("\n");
	emit_raw(big, biglen);
	biglen = 0;
}

static void res_errno(long err)
{
	for (size_t i = 0; i < sizeof(errnames) / sizeof(errnames[0]); i++)
		if (errnames[i].num == err) {
			res_add("-%s", errnames[i].name);
			return;
		}
	res_add("-E%ld", err);
}

/* a syscall result: the value formatted by the caller, or -ENAME */
static int sys_failed(long r)
{
	return r == -1;
}

/* RLE of a token list */
struct rle {
	char prev[64];
	int count;
	int any;
};

static void rle_flush(struct rle *r)
{
	if (!r->count)
		return;
	if (r->any)
		res_add(",");
	r->any = 1;
	if (r->count >= 2)
		res_add("%s*%d", r->prev, r->count);
	else
		res_add("%s", r->prev);
	r->count = 0;
}

static void rle_add(struct rle *r, const char *tok)
{
	if (r->count && !strcmp(r->prev, tok)) {
		r->count++;
		return;
	}
	rle_flush(r);
	snprintf(r->prev, sizeof(r->prev), "%s", tok);
	r->count = 1;
}

static void rle_end(struct rle *r)
{
	rle_flush(r);
	if (!r->any)
		res_add("-");
}

/* ---- data patterns ---- */
static u64 mix64(u64 x)
{
	u64 z = x + 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static u64 pat(u64 seed, u64 va)
{
	return mix64(((seed & 0xffff) << 48) ^ va);
}

static void pagehash_tok(const u64 *w, char *tok)
{
	u64 sum = 0;
	int zero = 1;
	for (int i = 0; i < 512; i++)
		if (w[i]) {
			zero = 0;
			break;
		}
	if (zero) {
		strcpy(tok, "z");
		return;
	}
	for (u64 i = 0; i < 512; i++)
		sum += mix64(w[i] ^ (i * 0x9e3779b97f4a7c15ULL));
	sprintf(tok, "%08x", (unsigned)(sum & 0xffffffffU));
}

/* ---- CPU accesses with signals caught ---- */
static sigjmp_buf fault_jmp;
static volatile sig_atomic_t fault_armed;
static volatile int fault_sig, fault_code;

static void fault_handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (!fault_armed) {
		signal(sig, SIG_DFL);
		raise(sig);
		return;
	}
	fault_armed = 0;
	fault_sig = sig;
	fault_code = si->si_code;
	siglongjmp(fault_jmp, 1);
}

static void res_signal(u64 page)
{
	const char *code = NULL;
	if (fault_sig == SIGSEGV) {
		if (fault_code == SEGV_MAPERR) code = "MAPERR";
		else if (fault_code == SEGV_ACCERR) code = "ACCERR";
		else if (fault_code == SI_KERNEL) code = "KERNEL";
	} else if (fault_sig == SIGBUS) {
		if (fault_code == BUS_ADRALN) code = "ADRALN";
		else if (fault_code == BUS_ADRERR) code = "ADRERR";
		else if (fault_code == BUS_OBJERR) code = "OBJERR";
		else if (fault_code == BUS_MCEERR_AR) code = "MCEERR_AR";
	}
	res_add("%s ", fault_sig == SIGSEGV ? "SIGSEGV" : "SIGBUS");
	if (code)
		res_add("%s @%" PRIu64, code, page);
	else
		res_add("%d @%" PRIu64, (int)fault_code, page);
}

static volatile u64 cur_page;

static void do_store(u64 addr, u64 npages, u64 seed)
{
	cur_page = 0;
	if (sigsetjmp(fault_jmp, 1)) {
		res_add("= ");
		res_signal(cur_page);
		return;
	}
	fault_armed = 1;
	for (u64 i = 0; i < npages; i++) {
		cur_page = i;
		u64 base = addr + i * PAGE_SIZE;
		for (u64 w = 0; w < 512; w++) {
			u64 va = base + 8 * w;
			*(volatile u64 *)va = pat(seed, va);
		}
	}
	fault_armed = 0;
	res_add("= ok");
}

static void do_load(u64 addr, u64 npages)
{
	static u64 page[512];
	static struct rle r;    /* static: intact after a siglongjmp */
	char tok[16];

	memset(&r, 0, sizeof(r));
	cur_page = 0;
	res_add("= ");
	if (sigsetjmp(fault_jmp, 1)) {
		rle_end(&r);
		res_add(" ");
		res_signal(cur_page);
		return;
	}
	fault_armed = 1;
	for (u64 i = 0; i < npages; i++) {
		cur_page = i;
		u64 base = addr + i * PAGE_SIZE;
		for (u64 w = 0; w < 512; w++)
			page[w] = *(volatile u64 *)(base + 8 * w);
		pagehash_tok(page, tok);
		rle_add(&r, tok);
	}
	fault_armed = 0;
	rle_end(&r);
}

static void do_poke(u64 addr, u64 value)
{
	if (sigsetjmp(fault_jmp, 1)) {
		res_add("= ");
		res_signal(0);
		return;
	}
	fault_armed = 1;
	*(volatile u64 *)addr = value;
	fault_armed = 0;
	res_add("= ok");
}

static void do_peek(u64 addr)
{
	u64 v;
	if (sigsetjmp(fault_jmp, 1)) {
		res_add("= ");
		res_signal(0);
		return;
	}
	fault_armed = 1;
	v = *(volatile u64 *)addr;
	fault_armed = 0;
	res_add("= 0x%" PRIx64, v);
}

/* ---- pagemap ---- */
static void do_pagemap(u64 addr, u64 npages)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	struct rle r;
	char tok[32];

	if (fd < 0) {
		res_add("= ");
		res_errno(errno);
		return;
	}
	memset(&r, 0, sizeof(r));
	u64 *ent = NULL;
	size_t want = (size_t)npages * 8;
	if (npages > (1UL << 28) || !(ent = malloc(want ? want : 8))) {
		close(fd);
		res_add("= -ENOMEM");
		return;
	}
	ssize_t n = pread(fd, ent, want, (off_t)((addr / PAGE_SIZE) * 8));
	int e = errno;
	close(fd);
	if (n < 0) {
		free(ent);
		res_add("= ");
		res_errno(e);
		return;
	}
	res_add("= ");
	for (ssize_t i = 0; i < n / 8; i++) {
		u64 v = ent[i];
		char *p = tok;
		if (v >> 63 & 1) *p++ = 'p';
		if (v >> 62 & 1) p += sprintf(p, "s%u", (unsigned)(v & 0x1f));
		if (v >> 61 & 1) *p++ = 'f';
		if (v >> 56 & 1) *p++ = 'x';
		if (v >> 55 & 1) *p++ = 'd';
		if (v >> 57 & 1) *p++ = 'w';
		if (p == tok) *p++ = '-';
		*p = 0;
		rle_add(&r, tok);
	}
	rle_end(&r);
	free(ent);
}

/* ---- clear_refs ---- */
static void do_clear_refs(u64 kind)
{
	char buf[2] = {(char)('0' + kind), '\n'};
	int fd = open("/proc/self/clear_refs", O_WRONLY);

	if (fd < 0) {
		res_add("= ");
		res_errno(errno);
		return;
	}
	ssize_t n = write(fd, buf, 2);
	int e = errno;
	close(fd);
	if (n < 0) {
		res_add("= ");
		res_errno(e);
		return;
	}
	res_add("= %zd", n);
}

/* ---- fds and ioctls ---- */
static int slots[NSLOTS];

/* Fill the first min(npages, 64) buffer pages (pat(seed) or 0xa5); 0 or a
 * caught signal (printed as "= SIG... @k"). */
static int fill_buffer(u64 npages, int pattern, u64 seed)
{
	u64 n = npages < BUF_PAGES ? npages : BUF_PAGES;
	cur_page = 0;
	if (sigsetjmp(fault_jmp, 1)) {
		res_add("= ");
		res_signal(cur_page);
		return -1;
	}
	fault_armed = 1;
	for (u64 i = 0; i < n; i++) {
		cur_page = i;
		for (u64 w = 0; w < 512; w++) {
			u64 va = BUF_ADDR + i * PAGE_SIZE + 8 * w;
			*(volatile u64 *)va = pattern ? pat(seed, va) : 0xa5a5a5a5a5a5a5a5ULL;
		}
	}
	fault_armed = 0;
	return 0;
}

/* " data=RLE" of the first n buffer pages, a signal ends it */
static void buffer_hashes(u64 n)
{
	static u64 page[512];
	static struct rle r;
	char tok[16];

	memset(&r, 0, sizeof(r));
	cur_page = 0;
	res_add(" data=");
	if (sigsetjmp(fault_jmp, 1)) {
		rle_end(&r);
		res_add(" ");
		res_signal(cur_page);
		return;
	}
	fault_armed = 1;
	for (u64 i = 0; i < n; i++) {
		cur_page = i;
		for (u64 w = 0; w < 512; w++)
			page[w] = *(volatile u64 *)(BUF_ADDR + i * PAGE_SIZE + 8 * w);
		pagehash_tok(page, tok);
		rle_add(&r, tok);
	}
	fault_armed = 0;
	rle_end(&r);
}

/* " snap=RLE" of the first nb buffer bytes, read page by page; a signal ends it */
static void buffer_bytes(u64 nb)
{
	static unsigned char page[PAGE_SIZE];
	static struct rle r;
	char tok[4];

	memset(&r, 0, sizeof(r));
	cur_page = 0;
	res_add(" snap=");
	if (sigsetjmp(fault_jmp, 1)) {
		rle_end(&r);
		res_add(" ");
		res_signal(cur_page);
		return;
	}
	fault_armed = 1;
	for (u64 off = 0; off < nb; off += PAGE_SIZE) {
		u64 len = nb - off < PAGE_SIZE ? nb - off : PAGE_SIZE;
		cur_page = off / PAGE_SIZE;
		for (u64 j = 0; j < len; j++)
			page[j] = *(volatile unsigned char *)(BUF_ADDR + off + j);
		for (u64 j = 0; j < len; j++) {
			sprintf(tok, "%02x", page[j]);
			rle_add(&r, tok);
		}
	}
	fault_armed = 0;
	rle_end(&r);
}

static void do_ioctl(const struct op *o)
{
	u64 req = o->a[0] & 0xffffffffULL;
	struct hmm_dmirror_cmd cmd = {
		.addr = o->a[1], .ptr = o->a[3], .npages = o->a[2], .cpages = 0, .faults = 0,
	};
	u64 n = o->a[2] < BUF_PAGES ? o->a[2] : BUF_PAGES;

	if (fill_buffer(o->a[2], req == HMM_REQ(0x01), o->a[4]))
		return;
	long r = syscall(SYS_ioctl, (long)slots[o->fd_slot], (unsigned long)req, &cmd);
	int e = errno;
	res_add("= ");
	if (r == -1)
		res_errno(e);
	else
		res_add("%ld", r);
	if (r == 0)
		res_add(" cpages=%" PRIu64 " faults=%" PRIu64, cmd.cpages, cmd.faults);
	if (!o->ptr_buf)
		return;
	if (req == HMM_REQ(0x00) || req == HMM_REQ(0x02))
		buffer_hashes(n);
	else if (req == HMM_REQ(0x04))
		buffer_bytes(o->a[2] < BUF_PAGES * PAGE_SIZE ? o->a[2] : BUF_PAGES * PAGE_SIZE);
}

/* ---- fork ---- */
struct held {
	pid_t pid;
	int release_w;
};
static struct held *held;
static int nheld, capheld;

static void status_str(int st)
{
	if (WIFEXITED(st))
		res_add("exit %d", WEXITSTATUS(st));
	else if (WIFSIGNALED(st))
		res_add("signal %d", WTERMSIG(st));
	else
		res_add("status %d", st);
}

/* a child died with its line unfinished: end that line (stdout a regular file) */
static int out_rd = -1;     /* stdout reopened for reading (a regular file) */

static void fix_partial_line(void)
{
	struct stat stbuf;
	char c;
	if (out_rd < 0 || fstat(out_rd, &stbuf) || !S_ISREG(stbuf.st_mode) || !stbuf.st_size)
		return;
	if (pread(out_rd, &c, 1, stbuf.st_size - 1) == 1 && c != '\n')
		emit_raw("\n", 1);
}

static int wait_child(pid_t pid)
{
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (WIFSIGNALED(st))
		fix_partial_line();
	return st;
}

static void reap_all(int print)
{
	int first = 1;
	if (print)
		res_add("= ");
	for (int i = 0; i < nheld; i++) {
		char b = 1;
		if (write(held[i].release_w, &b, 1) < 0) {
			/* the child is gone already: its wait status says how */
		}
	}
	for (int i = 0; i < nheld; i++) {
		int st = wait_child(held[i].pid);
		close(held[i].release_w);
		if (print) {
			if (!first)
				res_add(",");
			status_str(st);
		}
		first = 0;
	}
	if (print && !nheld)
		res_add("-");
	nheld = 0;
}

static void run_range(int from, int to);

static void child_exit(void)
{
	reap_all(0);
	_exit(0);
}

static void do_fork(int idx)
{
	const struct op *o = &ops[idx];
	int release[2] = {-1, -1}, ready[2] = {-1, -1};

	if (o->hold && (pipe(release) || pipe(ready))) {
		begin_op(o);
		res_add("= ");
		res_errno(errno);
		end_op();
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		begin_op(o);
		res_add("= ");
		res_errno(e);
		end_op();
		return;
	}
	if (pid == 0) {
		/* the child's held children are its own */
		for (int i = 0; i < nheld; i++)
			close(held[i].release_w);
		nheld = 0;
		run_range(idx + 1, o->match);
		reap_all(0);    /* its own held children, before it is held itself */
		if (o->hold) {
			char b = 0;
			close(release[1]);
			close(ready[0]);
			if (write(ready[1], &b, 1) < 0)
				_exit(4);
			close(ready[1]);
			while (read(release[0], &b, 1) < 0 && errno == EINTR)
				;
		}
		child_exit();
	}
	if (o->hold) {
		char b;
		close(release[0]);
		close(ready[1]);
		ssize_t got;
		while ((got = read(ready[0], &b, 1)) < 0 && errno == EINTR)
			;
		close(ready[0]);
		/* EOF: the child died in its block, maybe with its line unfinished */
		if (got != 1)
			fix_partial_line();
		if (nheld == capheld) {
			capheld = capheld ? capheld * 2 : 8;
			held = realloc(held, capheld * sizeof(*held));
		}
		held[nheld].pid = pid;
		held[nheld].release_w = release[1];
		nheld++;
		begin_op(o);
		res_add("= held");
		end_op();
		return;
	}
	int st = wait_child(pid);
	begin_op(o);
	res_add("= ");
	status_str(st);
	end_op();
}

static void run_op(int i)
{
	const struct op *o = &ops[i];
	long r;

	begin_op(o);
	switch (o->kind) {
	case OP_MMAP: {
		u64 fd = o->fd_slot >= 0 ? (u64)(long)slots[o->fd_slot] : o->a[4];
		r = syscall(SYS_mmap, o->a[0], o->a[1], (long)(int)o->a[2], (long)(int)o->a[3],
			    (long)(int)fd, o->a[5]);
		if (sys_failed(r)) { res_add("= "); res_errno(errno); }
		else res_add("= 0x%lx", (unsigned long)r);
		break;
	}
	case OP_MUNMAP:
		r = syscall(SYS_munmap, o->a[0], o->a[1]);
		goto plain;
	case OP_MPROTECT:
		r = syscall(SYS_mprotect, o->a[0], o->a[1], (long)(int)o->a[2]);
		goto plain;
	case OP_MADVISE:
		r = syscall(SYS_madvise, o->a[0], o->a[1], (long)(int)o->a[2]);
		goto plain;
	case OP_MREMAP:
		r = syscall(SYS_mremap, o->a[0], o->a[1], o->a[2], (long)(int)o->a[3], o->a[4]);
		if (sys_failed(r)) { res_add("= "); res_errno(errno); }
		else res_add("= 0x%lx", (unsigned long)r);
		break;
	case OP_STORE:
		do_store(o->a[0], o->a[1], o->a[2]);
		break;
	case OP_LOAD:
		do_load(o->a[0], o->a[1]);
		break;
	case OP_POKE:
		do_poke(o->a[0], o->a[1]);
		break;
	case OP_PEEK:
		do_peek(o->a[0]);
		break;
	case OP_PAGEMAP:
		do_pagemap(o->a[0], o->a[1]);
		break;
	case OP_CLEAR_REFS:
		do_clear_refs(o->a[0]);
		break;
	case OP_OPEN:
		r = syscall(SYS_open, o->path, (long)(int)o->a[0], 0600L);
		if (sys_failed(r)) { res_add("= "); res_errno(errno); }
		else { slots[o->fd_slot] = (int)r; res_add("= ok"); }
		break;
	case OP_CLOSE:
		r = syscall(SYS_close, (long)slots[o->fd_slot]);
		slots[o->fd_slot] = -1;
		goto plain;
	case OP_FTRUNCATE:
		r = syscall(SYS_ftruncate, (long)slots[o->fd_slot], o->a[0]);
		goto plain;
	case OP_IOCTL:
		do_ioctl(o);
		break;
	case OP_REAP:
		reap_all(1);
		break;
	default:
		break;
	}
	end_op();
	return;
plain:
	if (sys_failed(r)) { res_add("= "); res_errno(errno); }
	else res_add("= %ld", r);
	end_op();
}

static void run_range(int from, int to)
{
	for (int i = from; i < to; i++) {
		if (ops[i].kind == OP_FORK) {
			do_fork(i);
			i = ops[i].match;      /* continue after its end */
		} else if (ops[i].kind != OP_END) {
			run_op(i);
		}
	}
}

/* fd moved to `min` or above (close-on-exec), the original closed; -1 on failure */
static int high_fd(int fd, int min)
{
	int h;
	if (fd < 0)
		return -1;
	h = fcntl(fd, F_DUPFD_CLOEXEC, min);
	close(fd);
	return h;
}

int main(int argc, char **argv)
{
	struct sigaction sa;

	if (argc != 2) {
		fprintf(stderr, "usage: %s FILE.scn\n", argv[0]);
		return 2;
	}
	scn_path = argv[1];
	parse_file(argv[1]);
	/* the runner's own fds live at 900+, so a scenario's fds start at 3 and a
	 * literal fd in a scenario never hits one of them */
	out_rd = high_fd(open("/proc/self/fd/1", O_RDONLY | O_CLOEXEC), 900);
	if (getenv("HMMSIM_MIRROR_FD"))
		mirror_fd = high_fd(atoi(getenv("HMMSIM_MIRROR_FD")), 901);
	for (int i = 0; i < NSLOTS; i++)
		slots[i] = -1;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = fault_handler;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);

	void *b = mmap((void *)BUF_ADDR, BUF_PAGES * PAGE_SIZE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | MAP_POPULATE, -1, 0);
	if (b != (void *)BUF_ADDR) {
		fprintf(stderr, "runner: cannot map the buffer at %#lx: %s\n", BUF_ADDR,
			strerror(errno));
		return 3;
	}
	run_range(0, nops);
	reap_all(0);
	return 0;
}
