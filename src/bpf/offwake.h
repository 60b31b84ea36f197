/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * Types shared by offwake.bpf.c and user space (src/offwake.rs reads them
 * through the skeleton's generated `types` module: never mirror by hand).
 *
 * offwake sums, in the kernel, how long target threads were off CPU, keyed
 * by the blocked thread's stacks and by who woke it. Only the totals (the
 * `agg` hash map) and the stacks (the `stacks` stack-trace map) cross to
 * user space, read once at the end.
 */
#ifndef OFFWAKE_H
#define OFFWAKE_H

#define OW_COMM_LEN 16
#define OW_MAX_COMMS 8
/* PERF_MAX_STACK_DEPTH: the kernel's default kernel.perf_event_max_stack. */
#define OW_MAX_DEPTH 127

/*
 * A stack id that is not an id: the stack was not captured on purpose (a
 * kernel thread has no user stack; a wake-up from interrupt context has no
 * user stack of its own). Capture failures are stored as -errno instead.
 */
#define OW_STACK_NONE (-1000)

/* In which context the wake-up ran (sched_waking, read from preempt_count). */
enum ow_ctx {
	OW_CTX_TASK = 0,	/* process context of the waker task */
	OW_CTX_SOFTIRQ = 1,	/* serving a softirq (SOFTIRQ_OFFSET set) */
	OW_CTX_HARDIRQ = 2,	/* hard irq */
	OW_CTX_NMI = 3,
	OW_CTX_UNKNOWN = 4,	/* preempt_count not readable: classify from the kernel stack */
	OW_CTX_NOT_SEEN = 5,	/* no sched_waking seen for this blocked period */
};

/* Index into the per-CPU loss and statistics counters. */
enum ow_counter {
	OW_LOSS_KSTACK_EEXIST = 0,	/* kernel stack: hash bucket taken by another stack */
	OW_LOSS_KSTACK_ENOMEM = 1,	/* kernel stack: stack map full */
	OW_LOSS_KSTACK_EFAULT = 2,	/* kernel stack: could not be walked */
	OW_LOSS_KSTACK_OTHER = 3,
	OW_LOSS_USTACK_EEXIST = 4,
	OW_LOSS_USTACK_ENOMEM = 5,
	OW_LOSS_USTACK_EFAULT = 6,	/* user stack: no frame pointers, or unmapped */
	OW_LOSS_USTACK_OTHER = 7,
	OW_LOSS_AGG_FULL = 8,		/* the totals map (--max-keys) refused a new key */
	OW_LOSS_SLEEP_FULL = 9,		/* the per-thread state map refused an insert */
	OW_STAT_PERIODS = 10,		/* blocked periods summed */
	OW_STAT_REWAKES = 11,		/* extra wake-ups of an already woken period (first waker kept) */
	OW_STAT_NOT_SEEN = 12,		/* periods whose wake-up was not seen */
	OW_STAT_EARLY_WAKES = 13,	/* wake-ups seen while the thread was still switching out */
	OW_STAT_FILTERED = 14,		/* periods outside --min-block-us/--max-block-us */
	OW_STAT_NEW_PID_LOST = 15,	/* "new process" notifications dropped (ring buffer full) */
	OW_STAT_CTX_UNKNOWN = 16,	/* wake-ups whose context preempt_count could not tell */
	OW_STAT_NO_SWITCH_IN = 17,	/* periods left open: the thread switched out again, its switch-in unseen */
	OW_LOSS_TARGETS_FULL = 18,	/* a forked child (or a -t thread after its exec) not traced: a target map is full */
	OW_STAT_STATE_UNKNOWN = 19,	/* periods whose sleep state was overwritten by their waker (kernels < 5.18) */
	OW_COUNTER_MAX = 20,
};

/* Who woke a blocked period. */
struct ow_waker {
	__u32 pid;		/* tgid of the waker (of the interrupted task for irq contexts) */
	__u32 tid;
	__s32 kstack;		/* stack id, or -errno */
	__s32 ustack;		/* stack id, -errno, or OW_STACK_NONE */
	__u32 ctx;		/* enum ow_ctx */
	__u32 cpu;		/* CPU of the wake-up for interrupt contexts, else 0 */
	__u32 is_kthread;
	__u32 pad;
	char comm[OW_COMM_LEN];
};

/* Key of the totals map. Zeroed before filling: no stray padding bytes. */
struct ow_key {
	__u32 pid;		/* tgid of the blocked thread */
	__u32 tid;
	__s32 kstack;		/* blocked kernel stack id, or -errno */
	__s32 ustack;		/* blocked user stack id, -errno, or OW_STACK_NONE */
	__u32 state;		/* task state at switch-out (1 interruptible, 2 uninterruptible...) */
	__u32 is_kthread;
	char comm[OW_COMM_LEN];
	struct ow_waker waker;
};

/* Value of the totals map, summed in the kernel. */
struct ow_val {
	__u64 blocked_ns;	/* switch-out -> wake-up */
	__u64 runq_ns;		/* wake-up -> on CPU */
	__u64 count;		/* blocked periods */
};

/* A process seen for the first time (ring buffer): snapshot its maps now. */
struct ow_new_pid {
	__u32 pid;
	__u32 pad;
};

#endif /* OFFWAKE_H */
