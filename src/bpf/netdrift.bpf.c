// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * netdrift: packet -> socket -> epoll -> wake-up -> run queue -> CPU ->
 * epoll_wait -> accept/close, for a set of target threads.
 *
 * Tracepoints only: tp_btf for the scheduler and socket hooks (no tracefs
 * needed), classic syscall tracepoints for the syscalls (one program per
 * syscall, so untraced syscalls cost nothing).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "netdrift.h"
#include "targets.bpf.h"
#include "preempt.bpf.h"
#include "sched.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define AF_INET 2
#define AF_INET6 10
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define PF_KTHREAD 0x00200000
#define TCP_CLOSE 7
#define TCP_SYN_RECV 3

/* Configuration, set by user space before load. */
const volatile __u32 n_comms = 0;
const volatile char comms[ND_MAX_COMMS][ND_COMM_LEN] = {};
const volatile __u64 sock_window_ns = 2000000;
/* One readiness event wakes its threads within this of each other. */
const volatile __u64 herd_gap_ns = 1000000;
const volatile bool emit_switch_out = true;
/* Write epoll_enter at the syscall, not only when the thread blocks in it. */
const volatile bool emit_epoll_enter = false;
const volatile bool capture_stacks = true;
/*
 * Take a waker stack only if none was taken for the same signature (struct
 * stack_sig) in this long: the stack is ~2/3 of a wake-up's cost and its
 * class repeats. 0: every wake-up (--stacks, --record, report).
 */
const volatile __u64 stack_reuse_ns = 0;
const volatile bool trace_packets = false;
/* --epoll-ctl: every registration is traced, no need to read epitems. */
const volatile bool epoll_ctl_traced = false;
/* Syscall numbers of this architecture (-1: none), to read a blocked task's call. */
const volatile __s32 nr_epoll_wait = -1;
const volatile __s32 nr_epoll_pwait = -1;
const volatile __s32 nr_epoll_pwait2 = -1;
const volatile __s32 nr_accept = -1;
const volatile __s32 nr_accept4 = -1;
const volatile __s32 nr_sock_io[ND_NR_SOCK_IO] = { -1, -1, -1, -1, -1, -1, -1, -1, -1, -1 };
/* Wake the reader only once this much is waiting (it also polls every 100 ms). */
const volatile __u64 wakeup_bytes = 1 << 20;
/* Benchmark only: every program returns at once (the cost of attaching alone). */
const volatile bool bench_empty = false;

/* Force the record types into BTF so the skeleton generates them. */
struct nd_sock_ready _nd_sock_ready = {};
struct nd_wake _nd_wake = {};
struct nd_switch_in _nd_switch_in = {};
struct nd_switch_out _nd_switch_out = {};
struct nd_epoll_enter _nd_epoll_enter = {};
struct nd_epoll_exit _nd_epoll_exit = {};
struct nd_accept _nd_accept = {};
struct nd_close _nd_close = {};
struct nd_sock_state _nd_sock_state = {};
struct nd_task_new _nd_task_new = {};
struct nd_task_exit _nd_task_exit = {};
struct nd_epoll_ctl _nd_epoll_ctl = {};
struct nd_napi _nd_napi = {};
struct nd_handler _nd_handler = {};
struct nd_handler_cfg _nd_handler_cfg = {};
struct nd_epoll_reg _nd_epoll_reg = {};
enum nd_rec_type _nd_rec_type = 0;
enum nd_loss _nd_loss = 0;
enum nd_syscall _nd_syscall = 0;
enum nd_ready_hook _nd_ready_hook = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ND_LOSS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} losses SEC(".maps");

/*
 * Per CPU: epoll_wait returns of nothing that followed another one of the
 * same thread with nothing between (a busy poll): counted, not written.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} empty_returns SEC(".maps");

struct thread_state {
	__u64 runnable_ts;	/* 0: not waiting for a CPU */
	__u32 last_cpu;
	__u8 after_preempt;
	__u8 seen_cpu;
	/*
	 * Its last epoll_wait returned nothing, and it was not woken since. In
	 * padding: task_ctx's size is kept (a larger one made a task-storage
	 * allocation fail in a wake-up: map-full 1 in every demo run).
	 */
	__u8 empty_return;
	/* Preempted, not back on a CPU yet (in padding too). */
	__u8 out_preempted;
	/*
	 * A waker and the thread's own switch-out run at once on two CPUs: each
	 * stores its flag with an atomic exchange (a full barrier), then reads
	 * the other's, so at least one of them sees the other.
	 */
	__u32 asleep;		/* switched out voluntarily, not back on a CPU yet */
	/*
	 * sched_waking found it still on its CPU, sched_wakeup has not run yet:
	 * if it switches out now, that wake-up will bring it back.
	 */
	__u32 wake_inflight;
};

struct sys_args {
	__u64 ts;
	__u64 ptr;
	__s32 fd;
	__s32 n;
	__u32 syscall;
	__u32 cpu;
	/* `ts` of the call whose epoll_enter record is written (or being written). */
	__u64 emitted_ts;
	__u32 pending;		/* accepted sockets wait in task_ctx.pend for their registration */
};

/*
 * Per CPU: the readiness event whose wake-ups are being seen (one event can
 * wake several threads: a herd), and the last TCP state change.
 */
struct ready_slot {
	__u64 sk;
	__u64 ts;	/* when the event was seen (its first wake-up, or the state change) */
	__u64 last_ts;	/* its last wake-up */
	__u64 key;	/* progress_key() of the socket then */
	__u64 seq;
	__u64 count;	/* seqs handed out on this CPU */
	__u32 waker;
	__u32 hook;
	__s32 newstate;
	__u32 emitted;
	__u64 st_sk;	/* last inet_sock_set_state on this CPU */
	__u64 st_ts;
	__s32 st_newstate;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ready_slot);
} ready SEC(".maps");

/* --packets: the last packet received on this CPU. */
struct pkt_slot {
	__u64 ts;
	__u64 pending_seq;	/* a chain waits for this CPU's napi_poll */
	__u64 pending_ts;	/* since its wake-up */
	__u32 len;
	__u32 ifindex;
	char dev[ND_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pkt_slot);
} pkt SEC(".maps");

/* Per attached handler symbol (the uprobe's cookie): which args to read. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ND_MAX_HANDLERS);
	__type(key, __u32);
	__type(value, struct nd_handler_cfg);
} handler_cfg SEC(".maps");

/* Sockets the targets own, for state changes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u8);
} known_socks SEC(".maps");

#define ND_MAX_PENDING 8

/* Sockets a thread accepted since its last epoll_wait: their registrations are read then. */
struct pending_regs {
	__u64 file[ND_MAX_PENDING];
	__s32 fd[ND_MAX_PENDING];
	__u32 n;
	__u32 tries;
};

/*
 * Per target thread, in task local storage: the hot programs find it from
 * the task pointer they already have, cheaper than a hash lookup by tid, and
 * it is freed with the task (a reused tid starts afresh, nothing to clean up
 * at exit).
 */
struct task_ctx {
	struct thread_state th;
	struct sys_args sys;
	struct pending_regs pend;	/* read when sys.pending is set */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_ctx);
} tasks SEC(".maps");

static __always_inline void count_loss(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&losses, &which);

	/* Atomic though per CPU: a program in an interrupt can nest in another's increment. */
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline __u32 ringbuf_lost(void)
{
	__u32 which = ND_LOSS_RINGBUF;
	__u64 *v = bpf_map_lookup_elem(&losses, &which);

	return v ? (__u32)*v : 0;
}

static __always_inline bool is_target(__u32 tgid, __u32 tid)
{
	return target_ids(tgid, tid);
}

static __always_inline bool current_is_target(void)
{
	__u64 id = bpf_get_current_pid_tgid();

	return is_target(id >> 32, (__u32)id);
}

static __always_inline void *reserve(__u64 size, __u32 type)
{
	struct nd_hdr *h = bpf_ringbuf_reserve(&events, size, 0);

	if (!h) {
		count_loss(ND_LOSS_RINGBUF);
		return NULL;
	}
	h->type = type;
	h->cpu_lost = ringbuf_lost();
	h->cpu = bpf_get_smp_processor_id();
	h->ts = bpf_ktime_get_ns();
	return h;
}

/*
 * A wake-up per record would cost an IPI and a context switch per event on a
 * busy server: batch them.
 */
static __always_inline void submit(void *rec)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

	bpf_ringbuf_submit(rec, avail >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/*
 * A task's name as two loads from its BTF pointer, not a string copy (a
 * helper call each): the reader stops at the NUL and ignores what follows.
 */
static __always_inline void copy_comm(char *dst, const char *comm)
{
	__builtin_memcpy(dst, comm, ND_COMM_LEN);
}

static __always_inline void hdr_task(struct nd_hdr *h, struct task_struct *t)
{
	h->pid = t->tgid;
	h->tid = t->pid;
	copy_comm(h->comm, t->comm);
}

static __always_inline void hdr_current(struct nd_hdr *h)
{
	hdr_task(h, bpf_get_current_task_btf());
}

/*
 * A field of the kernel object of `type` at p, a pointer held as a number.
 * `direct`: the kernel has bpf_rdonly_cast (6.2+), so it is a plain load
 * instead of a helper call (bpf_probe_read_kernel: ~30 ns here, a dozen per
 * socket). Constant in each program that inlines it: the probed programs
 * never reference the kfunc. Both read 0 through a NULL pointer.
 */
#define ND_READ(direct, type, p, field) \
	((direct) ? bpf_core_cast((void *)(p), type)->field : BPF_CORE_READ((type *)(p), field))
#define ND_READ_BITFIELD(direct, type, p, field)                                   \
	((direct) ? BPF_CORE_READ_BITFIELD(bpf_core_cast((void *)(p), type), field) \
		  : BPF_CORE_READ_BITFIELD_PROBED((type *)(p), field))

static __always_inline void fill_sock_x(struct nd_sock *s, struct sock *sk, const bool direct)
{
	struct socket *so;
	struct file *f;
	struct inode *ino;
	struct net *net;
	__u32 l, r;
	__u16 family;

	s->sk = (__u64)sk;
	if (!sk)
		return;
	family = ND_READ(direct, struct sock, sk, __sk_common.skc_family);
	s->family = family;
	s->protocol = ND_READ_BITFIELD(direct, struct sock, sk, sk_protocol);
	s->state = ND_READ(direct, struct sock, sk, __sk_common.skc_state);
	s->lport = ND_READ(direct, struct sock, sk, __sk_common.skc_num);
	if (!s->lport)
		/* Cleared when the port is released (-> CLOSE); the header copy stays. */
		s->lport = bpf_ntohs(ND_READ(direct, struct inet_sock, sk, inet_sport));
	s->rport = bpf_ntohs(ND_READ(direct, struct sock, sk, __sk_common.skc_dport));
	net = ND_READ(direct, struct sock, sk, __sk_common.skc_net.net);
	s->netns = ND_READ(direct, struct net, net, ns.inum);
	so = ND_READ(direct, struct sock, sk, sk_socket);
	f = ND_READ(direct, struct socket, so, file);
	ino = ND_READ(direct, struct file, f, f_inode);
	s->ino = ND_READ(direct, struct inode, ino, i_ino);
	if (family == AF_INET) {
		l = ND_READ(direct, struct sock, sk, __sk_common.skc_rcv_saddr);
		r = ND_READ(direct, struct sock, sk, __sk_common.skc_daddr);
		__builtin_memcpy(s->laddr, &l, 4);
		__builtin_memcpy(s->raddr, &r, 4);
	} else if (family == AF_INET6 && direct) {
		struct sock *k = bpf_core_cast(sk, struct sock);

		__builtin_memcpy(s->laddr, k->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(s->raddr, k->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
	} else if (family == AF_INET6) {
		/* One helper call for the 16 bytes, not four. */
		BPF_CORE_READ_INTO(&s->laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&s->raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
}

static __always_inline void fill_sock(struct nd_sock *s, struct sock *sk)
{
	fill_sock_x(s, sk, false);
}

static __always_inline struct file *task_fd_file(struct task_struct *t, int fd)
{
	struct fdtable *fdt;
	struct file **fds;
	struct file *f = NULL;

	if (fd < 0)
		return NULL;
	fdt = t->files->fdt;
	if ((unsigned int)fd >= fdt->max_fds)
		return NULL;
	fds = fdt->fd;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline struct sock *file_sock_x(struct file *f, const bool direct)
{
	struct socket *so;
	struct inode *ino;

	if (!f)
		return NULL;
	ino = ND_READ(direct, struct file, f, f_inode);
	if ((ND_READ(direct, struct inode, ino, i_mode) & S_IFMT) != S_IFSOCK)
		return NULL;
	so = ND_READ(direct, struct file, f, private_data);
	return so ? ND_READ(direct, struct socket, so, sk) : NULL;
}

static __always_inline struct sock *file_sock(struct file *f)
{
	return file_sock_x(f, false);
}

static __always_inline struct file *fd_file(int fd)
{
	return task_fd_file(bpf_get_current_task_btf(), fd);
}

static __always_inline struct sock *fd_sock(int fd)
{
	return file_sock(fd_file(fd));
}

/*
 * A socket already CLOSE (reset while its owner slept, or in the accept
 * queue) changes state no more: kept, its entry would outlive it, and the
 * next socket the kernel makes at its address (any process, any netns)
 * would pass for the targets'.
 */
static __always_inline void remember_sock(__u64 sk, __u8 state)
{
	__u8 one = 1;

	if (state == TCP_CLOSE)
		return;
	/* A lookup is much cheaper than an LRU update, and most are known. */
	if (sk && !bpf_map_lookup_elem(&known_socks, &sk))
		bpf_map_update_elem(&known_socks, &sk, &one, BPF_ANY);
}

/* A target thread's state, created on first use; NULL only if memory ran out. */
static __always_inline struct task_ctx *tctx_get(struct task_struct *t)
{
	struct task_ctx *c = bpf_task_storage_get(&tasks, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (!c)
		count_loss(ND_LOSS_MAP_FULL);
	return c;
}

/* Its state if it has any: no allocation. */
static __always_inline struct task_ctx *tctx_peek(struct task_struct *t)
{
	return bpf_task_storage_get(&tasks, t, 0, 0);
}

/*
 * The syscall a thread is in, overwritten in place by the next one (a
 * delete per syscall would cost more than the rest of the program).
 * syscall == 0: none.
 */
static __always_inline void args_put(struct task_struct *t, struct sys_args *a)
{
	struct task_ctx *c = tctx_get(t);
	__u32 pending;

	if (!c)
		return;
	pending = c->sys.pending;
	c->sys = *a;
	c->sys.pending |= pending;
}

static __always_inline struct sys_args *args_get(struct task_struct *t)
{
	struct task_ctx *c = tctx_peek(t);

	return c && c->sys.syscall ? &c->sys : NULL;
}

/*
 * epoll_enter is written lazily: on a busy server most epoll_wait calls
 * return at once, and their exit record (which carries enter_ts) says it
 * all. It is written, with its own time, before the first other record about
 * the thread during the call (it blocks, is preempted or is woken), so the
 * stream reads as if it had been written at the syscall.
 */
static __always_inline void flush_enter(struct task_struct *t, struct sys_args *a)
{
	struct nd_epoll_enter *r;
	__u64 ts, done;

	/* Every call's record was written at its syscall. */
	if (!a || emit_epoll_enter)
		return;
	ts = *(volatile __u64 *)&a->ts;
	done = *(volatile __u64 *)&a->emitted_ts;
	if (!ts || done >= ts || !a->syscall || a->syscall > ND_SYS_EPOLL_PWAIT2)
		return;
	/*
	 * A waker on another CPU and the thread's own switch-out can both get
	 * here: the one that claims this call (by its ts) writes the record.
	 * Calls' ts only grow, so a stale claim (the thread began its next call
	 * meanwhile) names an older call and keeps no one from this one's.
	 */
	if (__sync_val_compare_and_swap(&a->emitted_ts, done, ts) != done)
		return;
	r = reserve(sizeof(*r), ND_REC_EPOLL_ENTER);
	if (!r)
		return;
	r->hdr.ts = ts;
	hdr_task(&r->hdr, t);
	r->call_cpu = a->cpu;
	r->epfd = a->fd;
	r->maxevents = a->n;
	r->syscall = a->syscall;
	/*
	 * The call returned (or the next began) before this reservation: its
	 * exit, which clears ts before reserving its own record, may already be
	 * in the ring, and an enter after its exit would reopen the call. Calls'
	 * ts never repeat, so the next call cannot pass for this one.
	 */
	if (*(volatile __u64 *)&a->ts != ts) {
		bpf_ringbuf_discard(r, BPF_RB_NO_WAKEUP);
		return;
	}
	submit(r);
}

/* ---- socket and scheduler hooks ---------------------------------------- */

/* Runs for every socket state change of the machine: a store, no shared counter. */
static __always_inline void state_slot_set(const struct sock *sk, int newstate)
{
	__u32 zero = 0;
	struct ready_slot *slot = bpf_map_lookup_elem(&ready, &zero);

	if (!slot)
		return;
	slot->st_sk = (__u64)sk;
	slot->st_ts = bpf_ktime_get_ns();
	slot->st_newstate = newstate;
}

struct pt_regs___x86 {
	long orig_ax;
} __attribute__((preserve_access_index));

struct pt_regs___arm64 {
	int syscallno;
} __attribute__((preserve_access_index));

/*
 * The syscall t is in, from the registers it saved on entry (-1: none, or
 * user mode); its saved registers in *regs. A kernel thread's are zeroes,
 * where "syscall 0" would read as read(2) on x86_64: none.
 */
static __always_inline long syscall_nr(struct task_struct *t, struct pt_regs **regs_out)
{
	struct pt_regs *regs;

	if (t->flags & PF_KTHREAD)
		return -1;
	regs = (struct pt_regs *)bpf_task_pt_regs(t);
	*regs_out = regs;
	if (!regs)
		return -1;
	if (bpf_core_field_exists(((struct pt_regs___x86 *)0)->orig_ax))
		return BPF_CORE_READ((struct pt_regs___x86 *)regs, orig_ax);
	if (bpf_core_field_exists(((struct pt_regs___arm64 *)0)->syscallno))
		return BPF_CORE_READ((struct pt_regs___arm64 *)regs, syscallno);
	return -1;
}

/*
 * The syscall a task blocked in before tracing started (no enter seen), from
 * the registers it saved on entry; its first argument in *fd.
 */
static __always_inline __u32 blocked_syscall(struct task_struct *p, int *fd)
{
	struct pt_regs *regs = NULL;
	long nr = syscall_nr(p, &regs);

	if (nr < 0)
		return 0;
	*fd = (int)PT_REGS_PARM1_CORE_SYSCALL(regs);
	if (nr == nr_epoll_wait)
		return ND_SYS_EPOLL_WAIT;
	if (nr == nr_epoll_pwait)
		return ND_SYS_EPOLL_PWAIT;
	if (nr == nr_epoll_pwait2)
		return ND_SYS_EPOLL_PWAIT2;
	if (nr == nr_accept)
		return ND_SYS_ACCEPT;
	if (nr == nr_accept4)
		return ND_SYS_ACCEPT4;
	for (int i = 0; i < ND_NR_SOCK_IO; i++)
		if (nr == nr_sock_io[i])
			return ND_SYS_SOCK_IO;
	return 0;
}

/*
 * The socket a sleeping target is being woken for, read where it waits (no
 * hook on every socket of the machine). In epoll_wait: the first item of its
 * epoll ready list, which was empty when it went to sleep, so the first item
 * is the one ep_poll_callback queued before this wake-up. In accept: the
 * listener. In read/recv/write/send/connect: the socket of its fd.
 */
/* The file of the first item on epoll file f's ready list, NULL if none. */
static __always_inline struct file *epoll_first_file(struct file *f, const bool direct)
{
	struct eventpoll *ep = ND_READ(direct, struct file, f, private_data);
	struct list_head *first;

	if (!ep)
		return NULL;
	first = ND_READ(direct, struct eventpoll, ep, rdllist.next);
	if (!first || (void *)first == (void *)ep + bpf_core_field_offset(struct eventpoll, rdllist))
		return NULL;
	return ND_READ(direct, struct epitem, (void *)first - bpf_core_field_offset(struct epitem, rdllink), ffd.file);
}

/*
 * An epoll instance's file: named "[eventpoll]" (anon_inode_getfile in
 * ep_create). Asked only of a first ready item that is no socket.
 * eventpoll_fops would be one compare, but it is not in kallsyms without
 * CONFIG_KALLSYMS_ALL.
 */
static __always_inline bool is_epoll_file(struct file *f, const bool direct)
{
	const unsigned char *name;
	char buf[12] = {};

	name = BPF_CORE_READ(f, f_path.dentry, d_name.name);
	if (!name || bpf_probe_read_kernel(buf, sizeof(buf), name))
		return false;
	/* "[eventpoll]" and its NUL. */
#pragma unroll
	for (int i = 0; i < sizeof(buf); i++)
		if (buf[i] != "[eventpoll]"[i])
			return false;
	return true;
}

static __always_inline struct sock *waited_sock(struct task_struct *p, struct sys_args *a, __u32 *hook, const bool direct)
{
	struct sock *sk;
	struct file *f;
	__u32 sc, h;
	int fd;

	if (a && a->syscall) {
		sc = a->syscall;
		fd = a->fd;
	} else {
		sc = blocked_syscall(p, &fd);
		if (!sc)
			return NULL;
	}
	if (sc == ND_SYS_ACCEPT || sc == ND_SYS_ACCEPT4)
		h = ND_HOOK_ACCEPT;
	else if (sc == ND_SYS_SOCK_IO)
		h = ND_HOOK_IO_WAIT;
	else if (sc <= ND_SYS_EPOLL_PWAIT2)
		h = ND_HOOK_EPOLL_ITEM;
	else
		return NULL;
	/*
	 * All wait for readiness interruptibly. An uninterruptible sleep in
	 * them is a lock (lock_sock in a herd's losing accept, ep->mtx): no
	 * socket is that wake-up's, not even a state change's.
	 */
	if (!(task_state(p) & 1 /* TASK_INTERRUPTIBLE */)) {
		*hook = h;
		return NULL;
	}
	f = task_fd_file(p, fd);
	if (h == ND_HOOK_IO_WAIT) {
		/* Blocked on its fd: that socket, or none (a pipe, a file). */
		*hook = h;
		return file_sock_x(f, direct);
	}
	if (!f)
		return NULL;
	/* Set even when the epoll list is empty (a timeout): no other socket is this wake-up's. */
	*hook = h;
	if (h == ND_HOOK_ACCEPT)
		return file_sock_x(f, direct);
	f = epoll_first_file(f, direct);
	sk = file_sock_x(f, direct);
	if (!sk && f && is_epoll_file(f, direct))
		/* A nested epoll instance (in this one's set): its own first ready item. */
		sk = file_sock_x(epoll_first_file(f, direct), direct);
	return sk;
}

/*
 * What changes when a socket becomes ready again, and not in between the
 * wake-ups of one readiness (a herd): for a listener, the connection that
 * was just queued (its ESTABLISHED transition is the last state change on
 * this CPU before the listener's wake-ups, and no other can come between
 * them: the wait-queue walk holds its lock with interrupts off; the queue
 * length would not do, as the first woken worker may accept before the
 * second is woken); for a TCP socket, its sequence numbers. The connection
 * is its address and the time of that change: a connection closed in
 * between frees its memory, and the next one is often made at the same
 * address (its wake-ups would join the last connection's event).
 */
static __always_inline __u64 progress_key(struct sock *sk, struct ready_slot *slot, const bool direct)
{
	if (ND_READ(direct, struct sock, sk, __sk_common.skc_state) == 10 /* TCP_LISTEN */)
		return slot->st_sk ^ slot->st_ts;
	if (ND_READ_BITFIELD(direct, struct sock, sk, sk_protocol) != 6 /* IPPROTO_TCP */) {
		/*
		 * A datagram has no sequence number. Its waker sends the next one
		 * after blocking for the reply: its context-switch count moves
		 * between two datagrams, never within one wake-up walk (a burst
		 * sent without blocking stays one event, as before).
		 */
		struct task_struct *cur = bpf_get_current_task_btf();

		return cur->nvcsw + cur->nivcsw + 1;
	}
	return ((__u64)ND_READ(direct, struct tcp_sock, sk, rcv_nxt) << 32) ^ ND_READ(direct, struct tcp_sock, sk, snd_una);
}


/*
 * Woken before it left its run queue: no run-queue wait follows. Since 6.12
 * (DELAY_DEQUEUE) a fair task that blocks with negative lag stays queued,
 * asleep, until picked: it is on_rq but waits for a CPU like any sleeper.
 */
static __always_inline int still_running(struct task_struct *p)
{
	if (!p->on_rq)
		return 0;
	if (bpf_core_field_exists(p->se.sched_delayed) && p->se.sched_delayed)
		return 0;
	return 1;
}

/*
 * A waker stack's class (cause, context) is nearly always the same for the
 * same waker, woken thread, socket hook and state, context (task, softirq,
 * hard irq, NMI) and waker's syscall (a write's data and a close's FIN
 * differ only there).
 */
struct stack_sig {
	__u32 waker_tid;
	__u32 target_tid;
	__u64 sig;	/* nd_wake.stack_sig */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct stack_sig);
	__type(value, __u64);	/* when its last stack was taken */
} stack_taken SEC(".maps");

/*
 * nd_wake.stack_sig of a wake-up by cur through sk (0: none) found by hook.
 * Without a socket, one thread's write() can wake through an eventfd or a
 * pipe alike: the written fd (its first argument) tells them apart.
 */
static __always_inline __u64 wake_sig(__u32 hook, __u64 sk, struct task_struct *cur, const bool direct)
{
	__u32 state = sk ? ND_READ(direct, struct sock, sk, __sk_common.skc_state) : 0;
	__u32 ctx = ctx_of_preempt_count(preempt_count_noksym());
	struct pt_regs *regs = NULL;
	long nr = syscall_nr(cur, &regs);
	__u64 arg = 0;

	if (!sk && nr >= 0 && regs && ctx == PC_CTX_TASK)
		arg = (__u64)PT_REGS_PARM1_CORE_SYSCALL(regs) & 0xffff;
	return hook | state << 8 | ctx << 16 | ((__u64)nr & 0xffff) << 32 | arg << 48;
}

/* Take this wake-up's stack (stack reuse on)? Marks the signature taken when it does. */
static __always_inline bool take_stack(struct stack_sig *sig, __u64 now)
{
	__u64 *last = bpf_map_lookup_elem(&stack_taken, sig);

	if (last && now - *last < stack_reuse_ns)
		return false;
	bpf_map_update_elem(&stack_taken, sig, &now, BPF_ANY);
	return true;
}

static __always_inline int sched_waking(void *ctx, struct task_struct *p, const bool direct)
{
	__u32 tgid = p->tgid, tid = p->pid, zero = 0;
	struct thread_state *ts;
	struct ready_slot *slot;
	struct nd_wake *w;
	struct task_struct *cur;
	__u64 now, seq = 0, sk = 0;
	__u32 hook = 0;
	struct sys_args *args;
	struct task_ctx *c;
	struct stack_sig sig = {};
	__u32 inflight_before;
	int on_rq;

	if (!is_target(tgid, tid))
		return 0;
	now = bpf_ktime_get_ns();

	slot = bpf_map_lookup_elem(&ready, &zero);
	/* One lookup of the thread's state for every use below. */
	c = tctx_get(p);
	args = c ? &c->sys : NULL;
	ts = c ? &c->th : NULL;
	/*
	 * First of all, before the socket work below: a switch-out running now
	 * on the thread's CPU must see the flag (or this must see its `asleep`).
	 */
	/*
	 * Its next empty epoll_wait return is written: this wake-up may be its
	 * story. Stored before the exchange below (a full barrier) and before
	 * flush_enter reads the call's ts; epoll_exit clears ts, then a full
	 * barrier, then reads this: one of the two sees the other.
	 */
	if (ts)
		ts->empty_return = 0;
	inflight_before = ts ? __sync_lock_test_and_set(&ts->wake_inflight, 1) : 0;
	/* A racing dequeue can leave on_rq set a little longer: trust our own switch-out too. */
	on_rq = still_running(p) && !(ts && ts->asleep);
	if (ts && !on_rq) {
		ts->wake_inflight = inflight_before;
		/* First waker of a sleep wins. */
		if (!ts->runnable_ts) {
			ts->runnable_ts = now;
			ts->after_preempt = 0;
		}
	}
	/* Before the socket event: that one's next record on this CPU must be its wake-up. */
	flush_enter(p, args);
	sk = (__u64)waited_sock(p, args, &hook, direct);
	if (!hook && slot && slot->st_sk && now - slot->st_ts <= sock_window_ns && (task_state(p) & 1)) {
		/*
		 * Not in epoll_wait or accept: a state change just before on this
		 * CPU. Socket waits sleep interruptibly; a lock or disk wait does not.
		 */
		sk = slot->st_sk;
		hook = ND_HOOK_STATE_CHANGE;
	}
	if (slot && sk) {
		__u64 key = progress_key((struct sock *)sk, slot, direct);
		__u32 waker = (__u32)bpf_get_current_pid_tgid();

		/*
		 * A state-change guess (a thread asleep elsewhere, maybe woken by
		 * its own timer on this CPU) never joins an event found another
		 * way: as its own event, its cause can disprove it.
		 */
		if (slot->sk != sk || slot->key != key || slot->waker != waker || now - slot->last_ts > herd_gap_ns ||
		    (hook == ND_HOOK_STATE_CHANGE && slot->hook != hook)) {
			/* Unique across CPUs, below 2^53 (exact in JavaScript). */
			slot->count++;
			slot->seq = (slot->count << 13) | (bpf_get_smp_processor_id() & 0x1fff);
			slot->sk = sk;
			slot->key = key;
			slot->waker = waker;
			slot->ts = now;
			slot->hook = hook;
			slot->newstate = 0;
			slot->emitted = 0;
			if (hook == ND_HOOK_STATE_CHANGE) {
				slot->newstate = slot->st_newstate;
				slot->ts = slot->st_ts;
			}
		}
		slot->last_ts = now;
		seq = slot->seq;
		if (!slot->emitted) {
			struct nd_sock_ready *r = reserve(sizeof(*r), ND_REC_SOCK_READY);

			if (r) {
				r->hdr.ts = slot->ts;
				hdr_current(&r->hdr);
				fill_sock_x(&r->sock, (struct sock *)sk, direct);
				r->seq = seq;
				r->hook = slot->hook;
				r->newstate = slot->newstate;
				/* Reserved ring memory is not zeroed: "no packet" must be written. */
				r->pkt_ts = 0;
				if (trace_packets) {
					struct pkt_slot *ps = bpf_map_lookup_elem(&pkt, &zero);

					if (ps && ps->ts && ps->ts <= slot->ts && slot->ts - ps->ts <= sock_window_ns) {
						r->pkt_ts = ps->ts;
						r->pkt_len = ps->len;
						r->pkt_ifindex = ps->ifindex;
						__builtin_memcpy(r->pkt_dev, ps->dev, sizeof(r->pkt_dev));
						ps->pending_seq = seq;
						ps->pending_ts = now;
					}
				}
				/*
				 * Read from the woken thread's own wait: its socket. A state
				 * change's is the last on this CPU, which the wake-up may
				 * not be for (user space can disprove it): not remembered.
				 */
				if (slot->hook != ND_HOOK_STATE_CHANGE)
					remember_sock(sk, r->sock.state);
				submit(r);
				slot->emitted = 1;
			}
		}
	}

	w = reserve(sizeof(*w), ND_REC_WAKE);
	if (!w)
		return 0;
	w->hdr.ts = now;
	hdr_current(&w->hdr);
	w->target_pid = tgid;
	w->target_tid = tid;
	copy_comm(w->target_comm, p->comm);
	w->sock_seq = seq;
	w->sk = sk;
	w->target_cpu = p->wake_cpu;
	w->target_on_rq = on_rq;
	cur = bpf_get_current_task_btf();
	w->waker_is_kthread = (cur->flags & PF_KTHREAD) ? 1 : 0;
	w->stack_sig = 0;
	w->stack_reused = 0;
	w->stack_sz = 0;
	/* Also with every stack taken: the signature lets a reader group wake-ups as reuse would. */
	if (capture_stacks)
		w->stack_sig = wake_sig(hook, sk, cur, direct);
	if (capture_stacks && stack_reuse_ns) {
		sig.waker_tid = w->hdr.tid;
		sig.target_tid = tid;
		sig.sig = w->stack_sig;
		/* After the reserve: a record that reuses a stack follows the one that took it. */
		w->stack_reused = !take_stack(&sig, now);
	}
	if (capture_stacks && !w->stack_reused) {
		w->stack_sz = bpf_get_stack(ctx, w->stack, sizeof(w->stack), 0);
		if (w->stack_sz < 0) {
			count_loss(ND_LOSS_STACK);
			/* Nothing to reuse: the next wake-up of this signature tries again. */
			if (stack_reuse_ns)
				bpf_map_delete_elem(&stack_taken, &sig);
		}
	}
	submit(w);
	return 0;
}

/* Kernels with bpf_rdonly_cast (6.2+); user space loads one of the two. */
SEC("tp_btf/sched_waking")
int BPF_PROG(nd_sched_waking, struct task_struct *p)
{
	if (bench_empty)
		return 0;
	return sched_waking(ctx, p, true);
}

SEC("tp_btf/sched_waking")
int BPF_PROG(nd_sched_waking_probed, struct task_struct *p)
{
	if (bench_empty)
		return 0;
	return sched_waking(ctx, p, false);
}

/* The wake-up is done: a later switch-out is a new sleep. */
SEC("tp_btf/sched_wakeup")
int BPF_PROG(nd_sched_wakeup, struct task_struct *p)
{
	if (bench_empty)
		return 0;
	struct task_ctx *c;

	if (!is_target(p->tgid, p->pid))
		return 0;
	c = tctx_peek(p);
	if (c)
		c->th.wake_inflight = 0;
	return 0;
}

/* `state`: prev's sleep state, 0 if it stays runnable (see the two programs below). */
static __always_inline int sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, long state)
{
	__u32 cpu = bpf_get_smp_processor_id();
	__u32 prev_tid = prev->pid, next_tid = next->pid;
	struct thread_state *ts;
	struct task_ctx *c;
	__u64 now = 0;
	__u32 woken = 0;

	/*
	 * A dead thread's last switch (TASK_DEAD, 0x80) comes after its exit
	 * took it, or its process, off the target lists: its task state, made
	 * only for targets and freed after this switch, says it was one.
	 */
	if (is_target(prev->tgid, prev_tid) || ((state & 0x80) && tctx_peek(prev))) {
		bool involuntary = preempt || state == 0;

		now = bpf_ktime_get_ns();
		c = tctx_get(prev);
		flush_enter(prev, c ? &c->sys : NULL);
		ts = c ? &c->th : NULL;
		if (ts) {
			ts->last_cpu = cpu;
			ts->seen_cpu = 1;
			/* Preempted or asleep: its next empty epoll_wait return is written. */
			ts->empty_return = 0;
			/*
			 * Still off its CPU from its last switch-out (asleep or
			 * preempted): this program missed the switch-in of the run now
			 * ending (seen on a guest kernel, about once a second). The time
			 * kept since is stale: left, it would make the next switch-in's
			 * run-queue wait span that run (and any sleep after it), and
			 * this switch-out look woken.
			 */
			if (ts->asleep || ts->out_preempted)
				ts->runnable_ts = 0;
			/*
			 * A voluntary switch keeps runnable_ts: switch-in cleared it,
			 * so it is set only by a wake-up that came after the dequeue
			 * in __schedule and before this tracepoint.
			 */
			if (involuntary) {
				ts->runnable_ts = now;
				ts->after_preempt = 1;
			} else {
				/* Asleep unless a waker got there first (see thread_state). */
				__sync_lock_test_and_set(&ts->asleep, 1);
				if (ts->wake_inflight || ts->runnable_ts) {
					/*
					 * Dequeued while a waker that saw it running was still in
					 * try_to_wake_up, or woken (runnable_ts set) between the
					 * dequeue and this tracepoint: either way that wake-up puts
					 * it back on a run queue. It is not asleep.
					 */
					woken = 1;
					ts->wake_inflight = 0;
					if (!ts->runnable_ts) {
						ts->runnable_ts = now;
						ts->after_preempt = 0;
					}
				}
			}
			ts->asleep = !involuntary && !woken;
			ts->out_preempted = involuntary;
		}
		if (emit_switch_out) {
			struct nd_switch_out *o = reserve(sizeof(*o), ND_REC_SWITCH_OUT);

			if (o) {
				o->hdr.ts = now;
				hdr_task(&o->hdr, prev);
				o->preempt = involuntary;
				o->woken = woken;
				o->state = state;
				o->next_tid = next_tid;
				copy_comm(o->next_comm, next->comm);
				submit(o);
			}
		}
	}

	if (is_target(next->tgid, next_tid)) {
		struct nd_switch_in *in;
		__u64 runnable_ts;
		__u32 last_cpu;
		__u8 after_preempt, seen;

		c = tctx_get(next);
		if (!c)
			return 0;
		ts = &c->th;
		runnable_ts = ts->runnable_ts;
		last_cpu = ts->last_cpu;
		after_preempt = ts->after_preempt;
		seen = ts->seen_cpu;
		ts->runnable_ts = 0;
		ts->last_cpu = cpu;
		ts->seen_cpu = 1;
		ts->asleep = 0;
		ts->out_preempted = 0;
		if (!runnable_ts)
			return 0;
		in = reserve(sizeof(*in), ND_REC_SWITCH_IN);
		if (!in)
			return 0;
		if (now)
			in->hdr.ts = now;
		hdr_task(&in->hdr, next);
		in->runnable_ts = runnable_ts;
		in->prev_cpu = seen ? last_cpu : cpu;
		in->after_preempt = after_preempt;
		in->prev_tid = prev_tid;
		copy_comm(in->prev_comm, prev->comm);
		submit(in);
	}
	return 0;
}

/* Before 5.18 (see switch_state in sched.bpf.h). */
SEC("tp_btf/sched_switch")
int BPF_PROG(nd_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	if (bench_empty)
		return 0;
	return sched_switch(preempt, prev, next, task_state(prev));
}

/* 5.18+: the tracepoint passes prev_state. */
SEC("tp_btf/sched_switch")
int BPF_PROG(nd_sched_switch_ps, bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
{
	if (bench_empty)
		return 0;
	return sched_switch(preempt, prev, next, switch_state(prev, prev_state));
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(nd_inet_sock_set_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (bench_empty)
		return 0;
	__u64 key = (__u64)sk;
	struct nd_sock_state *r;

	/*
	 * A FIN or RST wakes the owner through sk_state_change. A connection
	 * leaving SYN_RECV is not accepted yet: nobody waits on it (and on a
	 * server it is the most frequent change).
	 */
	if (oldstate != TCP_SYN_RECV)
		state_slot_set(sk, newstate);
	if (!bpf_map_lookup_elem(&known_socks, &key))
		return 0;
	/*
	 * A socket born (leaving CLOSE, or a listener's clone) at a known
	 * one's address, whose close raced with its entry being made: not
	 * the targets'.
	 */
	if (oldstate == TCP_CLOSE || (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV)) {
		bpf_map_delete_elem(&known_socks, &key);
		return 0;
	}
	r = reserve(sizeof(*r), ND_REC_SOCK_STATE);
	if (r) {
		hdr_current(&r->hdr);
		fill_sock(&r->sock, (struct sock *)sk);
		r->oldstate = oldstate;
		r->newstate = newstate;
		submit(r);
	}
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&known_socks, &key);
	return 0;
}

/* ---- --packets: the receive path before the socket ---------------------- */

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(nd_netif_receive_skb, struct sk_buff *skb)
{
	if (bench_empty)
		return 0;
	__u32 zero = 0;
	struct pkt_slot *ps = bpf_map_lookup_elem(&pkt, &zero);
	struct net_device *dev;

	if (!ps)
		return 0;
	ps->ts = bpf_ktime_get_ns();
	ps->len = skb->len;
	dev = skb->dev;
	ps->ifindex = dev ? dev->ifindex : 0;
	if (dev)
		bpf_probe_read_kernel_str(ps->dev, sizeof(ps->dev), dev->name);
	else
		ps->dev[0] = 0;
	return 0;
}

SEC("tp_btf/napi_poll")
int BPF_PROG(nd_napi_poll, struct napi_struct *napi, int work, int budget)
{
	if (bench_empty)
		return 0;
	__u32 zero = 0;
	struct pkt_slot *ps = bpf_map_lookup_elem(&pkt, &zero);
	struct net_device *dev;
	struct nd_napi *r;

	if (!ps || !ps->pending_seq)
		return 0;
	/*
	 * A wake-up in softirq ends its poll within microseconds. One in
	 * process context (the packet came just before, its poll is over)
	 * must not take the next, unrelated poll of this CPU.
	 */
	if (bpf_ktime_get_ns() - ps->pending_ts > sock_window_ns) {
		ps->pending_seq = 0;
		return 0;
	}
	r = reserve(sizeof(*r), ND_REC_NAPI);
	if (r) {
		hdr_current(&r->hdr);
		r->seq = ps->pending_seq;
		r->work = work;
		r->budget = budget;
		dev = napi->dev;
		if (dev)
			bpf_probe_read_kernel_str(r->dev, sizeof(r->dev), dev->name);
		else
			r->dev[0] = 0;
		submit(r);
	}
	ps->pending_seq = 0;
	return 0;
}

/* ---- process lifetime ------------------------------------------------- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(nd_process_fork, struct task_struct *parent, struct task_struct *child)
{
	if (bench_empty)
		return 0;
	__u32 ptgid = parent->tgid, ctgid = child->tgid;
	struct nd_task_new *r;

	if (!follow_children || ctgid == ptgid || child->pid != ctgid)
		return 0;
	if (!id_bit(&tgid_bits, ptgid))
		return 0;
	if (target_add(&targets_tgid, &tgid_bits, ctgid)) {
		count_loss(ND_LOSS_MAP_FULL);
		return 0;
	}
	r = reserve(sizeof(*r), ND_REC_TASK_NEW);
	if (r) {
		hdr_task(&r->hdr, parent);
		r->child_pid = ctgid;
		r->child_tid = child->pid;
		bpf_probe_read_kernel_str(r->child_comm, sizeof(r->child_comm), child->comm);
		r->reason = 1;
		submit(r);
	}
	return 0;
}

/*
 * p's exec as a task_new record: `reason` 2 (it matched -c, hdr.tid its tid)
 * or 3 (a target ran it: hdr.tid the thread that did, child_tid that
 * thread's tid from now on, its old one ending here).
 */
static __always_inline void exec_record(struct task_struct *p, const char *comm, __u32 tid, __u32 reason)
{
	struct nd_task_new *r = reserve(sizeof(*r), ND_REC_TASK_NEW);

	if (!r)
		return;
	hdr_task(&r->hdr, p);
	r->hdr.tid = tid;
	r->child_pid = p->tgid;
	r->child_tid = p->pid;
	__builtin_memcpy(r->child_comm, comm, ND_COMM_LEN);
	r->reason = reason;
	submit(r);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(nd_process_exec, struct task_struct *p, pid_t old_pid)
{
	if (bench_empty)
		return 0;
	char comm[ND_COMM_LEN];
	__u32 tgid = p->tgid, tid = p->pid, old = old_pid;
	bool target = is_target(tgid, tid) || (old != tid && is_target(tgid, old));

	if (!target && n_comms == 0)
		return 0;
	bpf_probe_read_kernel_str(comm, sizeof(comm), p->comm);
	/*
	 * A thread other than the leader that runs exec goes on as the leader,
	 * under the process's pid: a -t target follows it.
	 */
	if (target && old != tid && has_tids && id_bit(&tid_bits, old)) {
		target_del(&targets_tid, &tid_bits, old);
		target_add(&targets_tid, &tid_bits, tid);
	}
	/* A target ran a new program: its close-on-exec fds are gone (closed without a syscall). */
	if (target) {
		exec_record(p, comm, old, 3);
		return 0;
	}
	for (int i = 0; i < ND_MAX_COMMS; i++) {
		bool eq = true;

		if (i >= n_comms)
			return 0;
		for (int j = 0; j < ND_COMM_LEN; j++) {
			if (comm[j] != comms[i][j]) {
				eq = false;
				break;
			}
			if (!comm[j])
				break;
		}
		if (!eq)
			continue;
		if (target_add(&targets_tgid, &tgid_bits, tgid)) {
			count_loss(ND_LOSS_MAP_FULL);
			return 0;
		}
		exec_record(p, comm, tid, 2);
		return 0;
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(nd_process_exit, struct task_struct *p)
{
	if (bench_empty)
		return 0;
	__u32 tgid = p->tgid, tid = p->pid;
	bool tgid_target, tid_target, group_dead;
	struct nd_task_exit *r;

	/* Per-thread state is task storage: freed with the task, nothing to delete here. */
	if (trace_all) {
		tgid_target = tgid != self_tgid;
		tid_target = false;
	} else {
		tgid_target = id_bit(&tgid_bits, tgid);
		tid_target = has_tids && id_bit(&tid_bits, tid);
	}
	if (!tgid_target && !tid_target)
		return 0;
	/*
	 * The last thread of the process: do_exit has counted it out of
	 * signal->live before this tracepoint. Not "the leader exits": a leader
	 * can pthread_exit, or be killed by a sibling's exec, while the process
	 * lives on.
	 */
	group_dead = BPF_CORE_READ(p, signal, live.counter) == 0;
	if (tid_target)
		target_del(&targets_tid, &tid_bits, tid);
	if (tgid_target && group_dead && !trace_all)
		target_del(&targets_tgid, &tgid_bits, tgid);
	/*
	 * Every thread's exit: user space forgets its state (tids are reused,
	 * and a thread-per-connection server makes new ones all day).
	 */
	r = reserve(sizeof(*r), ND_REC_TASK_EXIT);
	if (r) {
		hdr_task(&r->hdr, p);
		r->group_dead = group_dead;
		submit(r);
	}
	return 0;
}

/* ---- syscalls ----------------------------------------------------------- */

struct file___fep {
	struct hlist_head *f_ep;
} __attribute__((preserve_access_index));

/*
 * The epitem of `file` in the epoll set `ep`: files keep the epitems watching
 * them on file->f_ep (5.11+), linked through epitem.fllink.
 */
static __always_inline struct epitem *epitem_of(struct file *file, struct eventpoll *ep)
{
	struct hlist_node *n;

	if (!bpf_core_field_exists(((struct file___fep *)0)->f_ep))
		return NULL;
	n = BPF_CORE_READ((struct file___fep *)file, f_ep, first);
	for (int i = 0; i < 4 && n; i++) {
		struct epitem *epi = (void *)n - bpf_core_field_offset(struct epitem, fllink);

		if (BPF_CORE_READ(epi, ep) == ep && BPF_CORE_READ(epi, ffd.file) == file)
			return epi;
		n = BPF_CORE_READ(n, next);
	}
	return NULL;
}

/*
 * Sockets this thread accepted since its last epoll_wait: by now it has
 * registered them (nginx, libevent and redis do it in the accept handler).
 * Report each one's data word; try twice more for those not registered yet.
 */
static __always_inline __u32 resolve_pending(struct pending_regs *p, int epfd)
{
	struct eventpoll *ep;
	struct file *epf;
	__u32 left = 0;

	if (!p->n)
		return 0;
	epf = fd_file(epfd);
	ep = epf ? BPF_CORE_READ(epf, private_data) : NULL;
	for (int i = 0; i < ND_MAX_PENDING; i++) {
		struct file *f;
		struct epitem *epi;
		struct nd_epoll_reg *r;

		if (i >= p->n)
			break;
		f = (struct file *)p->file[i];
		epi = ep ? epitem_of(f, ep) : NULL;
		if (!epi) {
			if (left < ND_MAX_PENDING && left <= i) {
				p->file[left & (ND_MAX_PENDING - 1)] = p->file[i];
				p->fd[left & (ND_MAX_PENDING - 1)] = p->fd[i];
				left++;
			}
			continue;
		}
		r = reserve(sizeof(*r), ND_REC_EPOLL_REG);
		if (!r)
			continue;
		hdr_current(&r->hdr);
		r->epfd = epfd;
		r->fd = BPF_CORE_READ(epi, ffd.fd);
		r->events = BPF_CORE_READ(epi, event.events);
		r->data = BPF_CORE_READ(epi, event.data);
		submit(r);
	}
	p->tries++;
	if (!left || p->tries >= 3) {
		p->n = 0;
		p->tries = 0;
		return 0;
	}
	p->n = left;
	return 1;
}

static __always_inline void add_pending(int fd)
{
	struct pending_regs *p;
	struct task_ctx *c;
	struct file *f = fd_file(fd);

	if (!f)
		return;
	c = tctx_get(bpf_get_current_task_btf());
	if (!c)
		return;
	p = &c->pend;
	/* The next epoll_wait looks at `pend` only when this is set. */
	c->sys.pending = 1;
	/* More than 8 accepts in one round: the rest are mapped from /proc. */
	if (p->n >= ND_MAX_PENDING)
		return;
	p->file[p->n & (ND_MAX_PENDING - 1)] = (__u64)f;
	p->fd[p->n & (ND_MAX_PENDING - 1)] = fd;
	p->n++;
	p->tries = 0;
}

static __always_inline int epoll_enter(struct trace_event_raw_sys_enter *ctx, __u32 sc)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct sys_args a = {};
	struct task_ctx *c;

	if (!is_target(id >> 32, tid))
		return 0;
	a.ts = bpf_ktime_get_ns();
	a.fd = (int)ctx->args[0];
	a.ptr = ctx->args[1];
	a.n = (int)ctx->args[2];
	a.syscall = sc;
	a.cpu = bpf_get_smp_processor_id();
	/* One lookup per call; the accepted sockets only after an accept. */
	c = tctx_get(bpf_get_current_task_btf());
	if (c && c->sys.pending)
		a.pending = resolve_pending(&c->pend, a.fd);
	if (emit_epoll_enter) {
		struct nd_epoll_enter *r = reserve(sizeof(*r), ND_REC_EPOLL_ENTER);

		if (r) {
			r->hdr.ts = a.ts;
			hdr_current(&r->hdr);
			r->epfd = a.fd;
			r->maxevents = a.n;
			r->syscall = sc;
			r->call_cpu = a.cpu;
			submit(r);
		}
	}
	if (!c)
		return 0;
	/*
	 * Field by field, `ts` last, and never `emitted_ts`: a whole-struct copy
	 * could erase a claim a waker just made on this call (claims name their
	 * call's ts, so an old one claims nothing new; with every enter written
	 * here, flush_enter claims nothing).
	 */
	c->sys.ptr = a.ptr;
	c->sys.fd = a.fd;
	c->sys.n = a.n;
	c->sys.syscall = a.syscall;
	c->sys.cpu = a.cpu;
	c->sys.pending = a.pending;
	*(volatile __u64 *)&c->sys.ts = a.ts;
	return 0;
}

/*
 * The arguments of the syscall in progress, for an exit whose enter was not
 * seen (the thread was already blocked in it when tracing started).
 */
static __always_inline void args_from_regs(struct sys_args *a, __u32 sc)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());

	a->ts = 0;
	a->fd = (int)PT_REGS_PARM1_CORE_SYSCALL(regs);
	a->ptr = PT_REGS_PARM2_CORE_SYSCALL(regs);
	a->n = (int)PT_REGS_PARM3_CORE_SYSCALL(regs);
	a->syscall = sc;
}

static __always_inline int epoll_exit(struct trace_event_raw_sys_exit *ctx, __u32 sc)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct sys_args *a, late = {}, call;
	struct nd_epoll_exit *r;
	__u32 esz = bpf_core_type_size(struct epoll_event), n;
	long ret = ctx->ret;
	struct task_ctx *c;

	if (!is_target(id >> 32, tid))
		return 0;
	c = tctx_peek(bpf_get_current_task_btf());
	a = c && c->sys.syscall ? &c->sys : NULL;
	if (!a) {
		args_from_regs(&late, sc);
		a = &late;
	}
	/* The call ends before this record is reserved (see flush_enter). */
	call = *a;
	*(volatile __u32 *)&a->syscall = 0;
	*(volatile __u64 *)&a->ts = 0;
	if (c && !emit_epoll_enter) {
		/*
		 * Nothing returned, nothing happened in the call (its enter record
		 * unwritten: no sleep, preemption or wake-up), and the same after
		 * its last return: a busy poll. Only the first of a run is written.
		 */
		if (ret == 0 && call.ts && c->th.empty_return) {
			/*
			 * A full barrier after ts was cleared, then the claim and the
			 * flag read again: a waker that claimed this call (flush_enter)
			 * or cleared the flag before reading ts is seen here.
			 */
			__u64 emitted = __sync_fetch_and_add(&c->sys.emitted_ts, 0);

			if (emitted != call.ts && *(volatile __u8 *)&c->th.empty_return) {
				__u32 zero = 0;
				__u64 *v = bpf_map_lookup_elem(&empty_returns, &zero);

				if (v)
					__sync_fetch_and_add(v, 1);
				return 0;
			}
		}
		c->th.empty_return = ret == 0;
	}
	r = reserve(sizeof(*r), ND_REC_EPOLL_EXIT);
	if (!r)
		return 0;
	hdr_current(&r->hdr);
	r->enter_ts = call.ts;
	r->epfd = call.fd;
	r->ret = ret;
	r->syscall = call.syscall;
	r->ev_size = esz;
	n = ret > 0 ? (ret < ND_MAX_EP_EVENTS ? ret : ND_MAX_EP_EVENTS) : 0;
	r->n_events = n;
	if (n && esz && esz <= 16) {
		__u32 bytes = n * esz;

		if (bytes > sizeof(r->ev_raw))
			bytes = sizeof(r->ev_raw);
		if (bpf_probe_read_user(r->ev_raw, bytes, (void *)call.ptr)) {
			count_loss(ND_LOSS_USER_READ);
			r->n_events = 0;
		}
	}
	submit(r);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_epoll_wait")
int nd_enter_epoll_wait(struct trace_event_raw_sys_enter *ctx)
{
	if (bench_empty)
		return 0;
	return epoll_enter(ctx, ND_SYS_EPOLL_WAIT);
}

SEC("tracepoint/syscalls/sys_exit_epoll_wait")
int nd_exit_epoll_wait(struct trace_event_raw_sys_exit *ctx)
{
	if (bench_empty)
		return 0;
	return epoll_exit(ctx, ND_SYS_EPOLL_WAIT);
}

SEC("tracepoint/syscalls/sys_enter_epoll_pwait")
int nd_enter_epoll_pwait(struct trace_event_raw_sys_enter *ctx)
{
	if (bench_empty)
		return 0;
	return epoll_enter(ctx, ND_SYS_EPOLL_PWAIT);
}

SEC("tracepoint/syscalls/sys_exit_epoll_pwait")
int nd_exit_epoll_pwait(struct trace_event_raw_sys_exit *ctx)
{
	if (bench_empty)
		return 0;
	return epoll_exit(ctx, ND_SYS_EPOLL_PWAIT);
}

SEC("tracepoint/syscalls/sys_enter_epoll_pwait2")
int nd_enter_epoll_pwait2(struct trace_event_raw_sys_enter *ctx)
{
	if (bench_empty)
		return 0;
	return epoll_enter(ctx, ND_SYS_EPOLL_PWAIT2);
}

SEC("tracepoint/syscalls/sys_exit_epoll_pwait2")
int nd_exit_epoll_pwait2(struct trace_event_raw_sys_exit *ctx)
{
	if (bench_empty)
		return 0;
	return epoll_exit(ctx, ND_SYS_EPOLL_PWAIT2);
}

SEC("tracepoint/syscalls/sys_enter_epoll_ctl")
int nd_enter_epoll_ctl(struct trace_event_raw_sys_enter *ctx)
{
	if (bench_empty)
		return 0;
	struct nd_epoll_ctl *r;
	struct epoll_event e = {};
	void *uev = (void *)ctx->args[3];

	if (!current_is_target())
		return 0;
	r = reserve(sizeof(*r), ND_REC_EPOLL_CTL);
	if (!r)
		return 0;
	hdr_current(&r->hdr);
	r->epfd = (int)ctx->args[0];
	r->op = (int)ctx->args[1];
	r->fd = (int)ctx->args[2];
	r->ret = 0;
	if (uev && bpf_probe_read_user(&e, sizeof(e), uev))
		r->ret = -14;
	r->events = e.events;
	r->data = e.data;
	submit(r);
	return 0;
}

static __always_inline int accept_enter(struct trace_event_raw_sys_enter *ctx, __u32 sc)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct sys_args a = {};

	if (!is_target(id >> 32, tid))
		return 0;
	a.ts = bpf_ktime_get_ns();
	a.fd = (int)ctx->args[0];
	a.syscall = sc;
	args_put(bpf_get_current_task_btf(), &a);
	return 0;
}

static __always_inline int accept_exit(struct trace_event_raw_sys_exit *ctx, __u32 sc)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct sys_args *a, late = {};
	struct nd_accept *r;
	struct sock *lsk, *nsk;
	long ret = ctx->ret;

	if (!is_target(id >> 32, tid))
		return 0;
	a = args_get(bpf_get_current_task_btf());
	if (!a) {
		args_from_regs(&late, sc);
		a = &late;
	}
	r = reserve(sizeof(*r), ND_REC_ACCEPT);
	if (!r) {
		a->syscall = 0;
		return 0;
	}
	hdr_current(&r->hdr);
	r->enter_ts = a->ts;
	r->listen_fd = a->fd;
	r->ret = ret;
	r->syscall = a->syscall;
	lsk = fd_sock(a->fd);
	fill_sock(&r->listen, lsk);
	r->backlog = lsk ? BPF_CORE_READ(lsk, sk_ack_backlog) : 0;
	r->max_backlog = lsk ? BPF_CORE_READ(lsk, sk_max_ack_backlog) : 0;
	/* Unzeroed ring memory: a failed accept must say "no peer" itself. */
	r->peer.sk = 0;
	if (ret >= 0) {
		nsk = fd_sock(ret);
		fill_sock(&r->peer, nsk);
		remember_sock((__u64)nsk, r->peer.state);
		if (!epoll_ctl_traced)
			add_pending(ret);
	}
	submit(r);
	a->syscall = 0;
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_accept")
int nd_enter_accept(struct trace_event_raw_sys_enter *ctx)
{
	if (bench_empty)
		return 0;
	return accept_enter(ctx, ND_SYS_ACCEPT);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int nd_exit_accept(struct trace_event_raw_sys_exit *ctx)
{
	if (bench_empty)
		return 0;
	return accept_exit(ctx, ND_SYS_ACCEPT);
}

SEC("tracepoint/syscalls/sys_enter_accept4")
int nd_enter_accept4(struct trace_event_raw_sys_enter *ctx)
{
	if (bench_empty)
		return 0;
	return accept_enter(ctx, ND_SYS_ACCEPT4);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int nd_exit_accept4(struct trace_event_raw_sys_exit *ctx)
{
	if (bench_empty)
		return 0;
	return accept_exit(ctx, ND_SYS_ACCEPT4);
}

SEC("tracepoint/syscalls/sys_enter_close")
int nd_enter_close(struct trace_event_raw_sys_enter *ctx)
{
	if (bench_empty)
		return 0;
	struct nd_close *r;
	struct sock *sk;
	int fd = (int)ctx->args[0];

	if (!current_is_target())
		return 0;
	r = reserve(sizeof(*r), ND_REC_CLOSE);
	if (!r)
		return 0;
	hdr_current(&r->hdr);
	r->fd = fd;
	sk = fd_sock(fd);
	r->is_socket = sk != NULL;
	fill_sock(&r->sock, sk);
	submit(r);
	return 0;
}

/* ---- application handlers (uprobes) ------------------------------------- */

static __always_inline __u64 uarg(__u64 *args, int n)
{
	return args[n & 7];
}

/* The cookie says which matched symbol fired. */
static __always_inline int handler_call(struct pt_regs *ctx)
{
	if (bench_empty)
		return 0;
	__u32 id = (__u32)bpf_get_attach_cookie(ctx);
	struct nd_handler_cfg *cfg;
	struct nd_handler *r;

	if (!current_is_target())
		return 0;
	cfg = bpf_map_lookup_elem(&handler_cfg, &id);
	if (!cfg)
		return 0;
	r = reserve(sizeof(*r), ND_REC_HANDLER);
	if (!r)
		return 0;
	hdr_current(&r->hdr);
	/* Fixed-offset loads: the verifier refuses a computed ctx offset. */
	__u64 args[8] = {
		PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx),
		PT_REGS_PARM4(ctx), PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx),
	};

	r->id = id;
	r->has = 0;
	r->fd = -1;
	r->events = 0;
	if (cfg->fd_arg >= 0 && cfg->fd_arg < 6) {
		r->fd = (int)uarg(args, cfg->fd_arg);
		r->has |= 1;
	}
	if (cfg->events_arg >= 0 && cfg->events_arg < 6) {
		r->events = uarg(args, cfg->events_arg);
		r->has |= 2;
	}
	submit(r);
	return 0;
}

/* One link per matched symbol, where the kernel has no multi-uprobes (< 6.6). */
SEC("uprobe")
int nd_handler(struct pt_regs *ctx)
{
	return handler_call(ctx);
}

/*
 * One link per file for all its symbols: a uprobe link's close waits for
 * a grace period (~0.1 s), one after another: 256 links, 26 s at exit.
 */
SEC("uprobe.multi")
int nd_handler_multi(struct pt_regs *ctx)
{
	return handler_call(ctx);
}
