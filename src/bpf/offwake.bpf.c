// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * offwake: off-CPU time of target threads, keyed by the blocked thread's
 * stacks and by the stacks of the task (or interrupt) that woke it, summed
 * in the kernel. BCC's offwaketime, on tracepoints only (tp_btf
 * sched_switch + sched_waking), with two numbers per key instead of one:
 *
 *   switch-out ----- blocked ----- sched_waking ---- run-queue wait ---- switch-in
 *
 * Per thread, `sleeps` holds the open blocked period: the time and stacks of
 * the switch-out, then the FIRST wake-up (later ones only count as rewakes).
 * At switch-in the period is added to `agg`. A wake-up done in softirq, hard
 * irq or NMI context (read from this CPU's preempt_count) is attributed to
 * that context, not to the task it happened to interrupt.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "offwake.h"
#include "targets.bpf.h"
#include "preempt.bpf.h"
#include "sched.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define PF_KTHREAD 0x00200000
#define TASK_DEAD 0x00000080
#define TASK_WAKING 0x00000200
#define EXIT_DEAD 0x00000010
#define EXIT_ZOMBIE 0x00000020

#define EEXIST 17
#define ENOMEM 12
#define EFAULT 14
#define E2BIG 7

/*
 * A wake-up seen while its target was still inside __schedule() on another
 * CPU (the switch-out tracepoint had not run yet) belongs to the period that
 * switch-out starts only if it is this recent.
 */
#define EARLY_WAKE_NS 200000ULL

/* Configuration, set by user space before load. */
const volatile __u32 n_comms = 0;
const volatile char comms[OW_MAX_COMMS][OW_COMM_LEN] = {};
const volatile bool user_threads_only = false;
const volatile bool kernel_threads_only = false;
/* Task states counted at switch-out; 0: any sleeping state. */
const volatile __u32 state_mask = 0;
const volatile __u64 min_block_ns = 0;
const volatile __u64 max_block_ns = ~0ULL;
const volatile bool user_stacks = true;
const volatile bool kernel_stacks = true;
/* Force the shared types into BTF so the skeleton generates them. */
struct ow_key _ow_key = {};
struct ow_val _ow_val = {};
struct ow_waker _ow_waker = {};
struct ow_new_pid _ow_new_pid = {};
enum ow_ctx _ow_ctx = 0;
enum ow_counter _ow_counter = 0;

/* Where this kernel keeps preempt_count (x86_64: per-CPU, name by version). */
extern int __preempt_count __ksym __weak;

struct pcpu_hot___ow {
	int preempt_count;
} __attribute__((preserve_access_index));
extern struct pcpu_hot___ow pcpu_hot __ksym __weak;


struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);	/* --stack-storage-size */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, OW_MAX_DEPTH * sizeof(__u64));
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);	/* --max-keys */
	__type(key, struct ow_key);
	__type(value, struct ow_val);
} agg SEC(".maps");

/* The open blocked period of a thread. */
struct sleep {
	__u64 off_ts;		/* switch-out; 0: only an early wake-up is known */
	__u64 wake_ts;		/* first wake-up; 0: not woken yet */
	__s32 kstack;
	__s32 ustack;
	__u32 state;
	__u32 pad;
	struct ow_waker waker;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct sleep);
} sleeps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OW_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Processes whose user stacks were captured: user space snapshots their maps. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} seen_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 10);
} new_pids SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &which);

	/* Atomic though per CPU: a program in an interrupt can nest in another's increment. */
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline bool comm_eq(const char *a, const volatile char *b)
{
	for (int j = 0; j < OW_COMM_LEN; j++) {
		if (a[j] != b[j])
			return false;
		if (!a[j])
			break;
	}
	return true;
}

static __always_inline bool comm_match(struct task_struct *t)
{
	char comm[OW_COMM_LEN], lcomm[OW_COMM_LEN];

	bpf_probe_read_kernel_str(comm, sizeof(comm), t->comm);
	bpf_probe_read_kernel_str(lcomm, sizeof(lcomm), t->group_leader->comm);
	for (int i = 0; i < OW_MAX_COMMS; i++) {
		if (i >= n_comms)
			break;
		if (comm_eq(comm, comms[i]) || comm_eq(lcomm, comms[i]))
			return true;
	}
	return false;
}

static __always_inline bool is_target(struct task_struct *t)
{
	__u32 tgid = t->tgid, tid = t->pid;
	bool kthread = t->flags & PF_KTHREAD;

	if (tgid == 0)
		return false;
	if (user_threads_only && kthread)
		return false;
	if (kernel_threads_only && !kthread)
		return false;
	if (target_ids(tgid, tid))
		return true;
	return !trace_all && n_comms && comm_match(t);
}

static __always_inline bool state_wanted(long state)
{
	if (state == 0 || (state & (TASK_DEAD | EXIT_DEAD | EXIT_ZOMBIE)))
		return false;
	/* Its sleep state was lost (ow_sched_switch): no filter can tell. */
	if (state == TASK_WAKING)
		return true;
	return state_mask == 0 || (state & state_mask);
}

static __always_inline void count_stack_err(long err, bool user)
{
	__u32 base = user ? OW_LOSS_USTACK_EEXIST : OW_LOSS_KSTACK_EEXIST;

	if (err == -EEXIST)
		count(base);
	else if (err == -ENOMEM)
		count(base + 1);
	else if (err == -EFAULT)
		count(base + 2);
	else
		count(base + 3);
}

static __always_inline __s32 kstack_id(void *ctx)
{
	long id;

	if (!kernel_stacks)
		return OW_STACK_NONE;
	id = bpf_get_stackid(ctx, &stacks, 0);
	if (id < 0)
		count_stack_err(id, false);
	return id;
}

/* The current task's user stack; remembers its process for user space. */
static __always_inline __s32 ustack_id(void *ctx, __u32 tgid)
{
	long id;
	__u8 one = 1;

	if (!user_stacks)
		return OW_STACK_NONE;
	id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (id < 0) {
		count_stack_err(id, true);
		return id;
	}
	if (!bpf_map_lookup_elem(&seen_pids, &tgid)) {
		long err = bpf_map_update_elem(&seen_pids, &tgid, &one, BPF_NOEXIST);
		struct ow_new_pid *n;

		if (err == -EEXIST)
			return id;
		/* With the map full, the process's maps are never snapshotted either. */
		n = err ? NULL : bpf_ringbuf_reserve(&new_pids, sizeof(*n), 0);
		if (n) {
			n->pid = tgid;
			n->pad = 0;
			bpf_ringbuf_submit(n, 0);
		} else {
			count(OW_STAT_NEW_PID_LOST);
		}
	}
	return id;
}

/*
 * In which context is this CPU: task, softirq, hard irq or NMI? With
 * `use_ksym` (a constant: two programs are built, user space loads the one
 * this kernel can resolve), preempt_count is read through its ksym.
 */
static __always_inline __u32 wake_ctx(bool use_ksym)
{
	__s64 pc = -1;

	if (use_ksym) {
		if (bpf_ksym_exists(&__preempt_count)) {
			int *p = bpf_this_cpu_ptr(&__preempt_count);

			pc = (__u32)*p;
		} else if (bpf_ksym_exists(&pcpu_hot)) {
			struct pcpu_hot___ow *h = bpf_this_cpu_ptr(&pcpu_hot);

			pc = (__u32)h->preempt_count;
		}
	} else {
		pc = preempt_count_noksym();
	}
	if (pc < 0)
		count(OW_STAT_CTX_UNKNOWN);
	return ctx_of_preempt_count(pc);
}

_Static_assert(OW_CTX_TASK == PC_CTX_TASK && OW_CTX_SOFTIRQ == PC_CTX_SOFTIRQ && OW_CTX_HARDIRQ == PC_CTX_HARDIRQ &&
		       OW_CTX_NMI == PC_CTX_NMI && OW_CTX_UNKNOWN == PC_CTX_UNKNOWN,
	       "offwake's contexts are preempt.bpf.h's");

/* Fill `w` with the current task / context as the waker. */
static __always_inline void fill_waker(void *ctx, struct ow_waker *w, bool use_ksym)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	__u64 id = bpf_get_current_pid_tgid();
	__u32 c = wake_ctx(use_ksym);

	w->pid = id >> 32;
	w->tid = (__u32)id;
	w->ctx = c;
	w->is_kthread = (cur->flags & PF_KTHREAD) ? 1 : 0;
	w->cpu = (c == OW_CTX_TASK) ? 0 : bpf_get_smp_processor_id();
	bpf_get_current_comm(w->comm, sizeof(w->comm));
	w->kstack = kstack_id(ctx);
	/*
	 * An interrupt's "user stack" is whatever the interrupted task was
	 * doing: not the waker's. A kernel thread has none, nor has an exiting
	 * task past exit_mm() (it wakes its parent from there). With the context
	 * unknown, it is taken and user space drops it if the stack says irq.
	 */
	if ((c == OW_CTX_TASK || c == OW_CTX_UNKNOWN) && !w->is_kthread && w->pid != 0 && cur->mm)
		w->ustack = ustack_id(ctx, w->pid);
	else
		w->ustack = OW_STACK_NONE;
}

static __always_inline int on_waking(void *ctx, struct task_struct *p, bool use_ksym)
{
	__u32 tid = p->pid;
	struct sleep *s, early = {};
	__u64 now;
	long err;

	s = bpf_map_lookup_elem(&sleeps, &tid);
	if (s) {
		if (s->wake_ts) {
			/* Keep the FIRST waker of the period. */
			count(OW_STAT_REWAKES);
			return 0;
		}
		now = bpf_ktime_get_ns();
		fill_waker(ctx, &s->waker, use_ksym);
		s->wake_ts = now;
		return 0;
	}
	/*
	 * No open period: either not a target, asleep since before the trace,
	 * or still inside __schedule() on another CPU, its switch-out not
	 * traced yet. Only the last is worth keeping, for its switch-out.
	 */
	if (!p->on_cpu || p == bpf_get_current_task_btf() || !is_target(p))
		return 0;
	early.wake_ts = bpf_ktime_get_ns();
	fill_waker(ctx, &early.waker, use_ksym);
	err = bpf_map_update_elem(&sleeps, &tid, &early, BPF_NOEXIST);
	if (err == -EEXIST) {
		/*
		 * Its switch-out opened the period while the stacks above were
		 * taken (microseconds): this wake-up is that period's.
		 */
		s = bpf_map_lookup_elem(&sleeps, &tid);
		if (s && !s->wake_ts) {
			s->waker = early.waker;
			s->wake_ts = early.wake_ts;
			count(OW_STAT_EARLY_WAKES);
		}
	} else if (err == -E2BIG) {
		count(OW_LOSS_SLEEP_FULL);
	}
	return 0;
}

/* Kernels whose per-CPU preempt_count has no kallsyms address. */
SEC("tp_btf/sched_waking")
int BPF_PROG(ow_sched_waking, struct task_struct *p)
{
	return on_waking(ctx, p, false);
}

/* Kernels with CONFIG_KALLSYMS_ALL: preempt_count through its ksym. */
SEC("tp_btf/sched_waking")
int BPF_PROG(ow_sched_waking_ksym, struct task_struct *p)
{
	return on_waking(ctx, p, true);
}

/*
 * `s` holds only a wake-up seen while its thread was still switching out (at
 * `now`). That wake-up may be stamped a little after `now`, when it was
 * inserted between the switch-out's lookup and its write.
 */
static __always_inline bool woken_early(struct sleep *s, __u64 now)
{
	return s && !s->off_ts && s->wake_ts && now <= s->wake_ts + EARLY_WAKE_NS;
}

/* `state`: the sleep state, 0 if prev stays runnable. */
static __always_inline void switch_out(void *ctx, bool preempt, struct task_struct *prev, long state)
{
	__u32 tid = prev->pid;
	struct sleep *s, fresh = {};
	__u64 now;
	long err;

	if (!is_target(prev))
		return;
	s = bpf_map_lookup_elem(&sleeps, &tid);
	/*
	 * A period still open: the switch-in that ends it was not seen (a guest
	 * kernel drops one now and then). It cannot be summed; say so.
	 */
	if (s && s->off_ts)
		count(OW_STAT_NO_SWITCH_IN);
	if (preempt || !state_wanted(state)) {
		/* Still runnable, or not counted: no period opens. */
		if (s)
			bpf_map_delete_elem(&sleeps, &tid);
		return;
	}
	if (state == TASK_WAKING)
		count(OW_STAT_STATE_UNKNOWN);
	now = bpf_ktime_get_ns();
	fresh.off_ts = now;
	fresh.state = state;
	fresh.kstack = kstack_id(ctx);
	fresh.ustack = (prev->flags & PF_KTHREAD) || !prev->mm ? OW_STACK_NONE : ustack_id(ctx, prev->tgid);
	fresh.waker.ctx = OW_CTX_NOT_SEEN;
	fresh.waker.kstack = OW_STACK_NONE;
	fresh.waker.ustack = OW_STACK_NONE;
	if (!woken_early(s, now)) {
		/* With no entry at the lookup, do not overwrite an early wake-up inserted since. */
		err = bpf_map_update_elem(&sleeps, &tid, &fresh, s ? BPF_ANY : BPF_NOEXIST);
		if (err != -EEXIST) {
			if (err)
				count(OW_LOSS_SLEEP_FULL);
			return;
		}
		s = bpf_map_lookup_elem(&sleeps, &tid);
		if (!woken_early(s, now))
			return;
	}
	/* Woken while switching out: that wake-up ends this period. */
	count(OW_STAT_EARLY_WAKES);
	s->off_ts = now;
	s->state = state;
	s->kstack = fresh.kstack;
	s->ustack = fresh.ustack;
}

static __always_inline void switch_in(struct task_struct *next)
{
	__u32 tid = next->pid;
	struct sleep *s;
	struct ow_key key;
	struct ow_val *v, zero = {};
	__u64 now, blocked, runq;
	long err;

	s = bpf_map_lookup_elem(&sleeps, &tid);
	if (!s)
		return;
	if (!s->off_ts) {
		/* Only an early wake-up, never matched by a switch-out. */
		bpf_map_delete_elem(&sleeps, &tid);
		return;
	}
	now = bpf_ktime_get_ns();
	/* Like BCC's -m/-M: on the whole time off CPU. */
	if (now - s->off_ts < min_block_ns || now - s->off_ts > max_block_ns) {
		count(OW_STAT_FILTERED);
		bpf_map_delete_elem(&sleeps, &tid);
		return;
	}
	if (s->wake_ts) {
		blocked = s->wake_ts > s->off_ts ? s->wake_ts - s->off_ts : 0;
		/* Woken early (before its switch-out ended): off CPU only from the switch-out. */
		__u64 from = s->wake_ts > s->off_ts ? s->wake_ts : s->off_ts;

		runq = now > from ? now - from : 0;
	} else {
		count(OW_STAT_NOT_SEEN);
		blocked = now - s->off_ts;
		runq = 0;
	}
	__builtin_memset(&key, 0, sizeof(key));
	key.pid = next->tgid;
	key.tid = tid;
	key.kstack = s->kstack;
	key.ustack = s->ustack;
	key.state = s->state;
	key.is_kthread = (next->flags & PF_KTHREAD) ? 1 : 0;
	bpf_probe_read_kernel_str(key.comm, sizeof(key.comm), next->comm);
	key.waker = s->waker;
	bpf_map_delete_elem(&sleeps, &tid);

	v = bpf_map_lookup_elem(&agg, &key);
	if (!v) {
		err = bpf_map_update_elem(&agg, &key, &zero, BPF_NOEXIST);
		if (err && err != -EEXIST) {
			count(OW_LOSS_AGG_FULL);
			return;
		}
		v = bpf_map_lookup_elem(&agg, &key);
		if (!v)
			return;
	}
	__sync_fetch_and_add(&v->blocked_ns, blocked);
	__sync_fetch_and_add(&v->runq_ns, runq);
	__sync_fetch_and_add(&v->count, 1);
	count(OW_STAT_PERIODS);
}

/* Before 5.18 (see switch_state in sched.bpf.h). Runs on prev: its stacks are the current ones. */
SEC("tp_btf/sched_switch")
int BPF_PROG(ow_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	switch_out(ctx, preempt, prev, task_state(prev));
	switch_in(next);
	return 0;
}

/* 5.18+: the tracepoint passes prev_state. */
SEC("tp_btf/sched_switch")
int BPF_PROG(ow_sched_switch_ps, bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
{
	switch_out(ctx, preempt, prev, switch_state(prev, prev_state));
	switch_in(next);
	return 0;
}

/*
 * A wake-up that found its thread still on its CPU, before it blocked (it
 * had only set its state): no switch-out follows, and that early record
 * must not be taken by the thread's next sleep. sched_wakeup runs under
 * the thread's run-queue lock, like its switch-out, and after the
 * switch-out of a thread that did block.
 */
SEC("tp_btf/sched_wakeup")
int BPF_PROG(ow_sched_wakeup, struct task_struct *p)
{
	__u32 tid = p->pid;
	struct sleep *s = bpf_map_lookup_elem(&sleeps, &tid);

	if (s && !s->off_ts)
		bpf_map_delete_elem(&sleeps, &tid);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(ow_process_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = parent->tgid, ctgid = child->tgid;

	if (!follow_children || trace_all || ctgid == ptgid || child->pid != ctgid)
		return 0;
	if (!id_bit(&tgid_bits, ptgid))
		return 0;
	if (target_add(&targets_tgid, &tgid_bits, ctgid))
		count(OW_LOSS_TARGETS_FULL);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(ow_process_exec, struct task_struct *p, pid_t old_pid)
{
	__u32 tid = p->pid, old = old_pid;

	/*
	 * A -t thread other than the leader that runs exec goes on as the
	 * leader, under the process's pid: its target entry follows it.
	 */
	if (has_tids && old != tid && id_bit(&tid_bits, old)) {
		target_del(&targets_tid, &tid_bits, old);
		if (target_add(&targets_tid, &tid_bits, tid))
			count(OW_LOSS_TARGETS_FULL);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(ow_process_exit, struct task_struct *p)
{
	__u32 tid = p->pid, tgid = p->tgid;

	bpf_map_delete_elem(&sleeps, &tid);
	/*
	 * The last thread of a process (do_exit counted it out of signal->live
	 * before this tracepoint): its pid may be reused by another process,
	 * and children that came and went must not fill the map.
	 */
	if (!trace_all && BPF_CORE_READ(p, signal, live.counter) == 0 && id_bit(&tgid_bits, tgid))
		target_del(&targets_tgid, &tgid_bits, tgid);
	/* A -t thread: its tid may be reused too. */
	if (has_tids && id_bit(&tid_bits, tid))
		target_del(&targets_tid, &tid_bits, tid);
	return 0;
}
