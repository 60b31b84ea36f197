/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * A task's state at sched_switch, shared by netdrift.bpf.c and offwake.bpf.c:
 * both load one of two sched_switch programs, chosen by user space from BTF.
 */
#ifndef NETDRIFT_SCHED_BPF_H
#define NETDRIFT_SCHED_BPF_H

/* Kernels before 5.14 name it `state`. */
struct task_struct___o {
	volatile long state;
} __attribute__((preserve_access_index));

static __always_inline long task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return t->__state;
	return ((struct task_struct___o *)t)->state;
}

/*
 * prev's sleep state at a sched_switch of 5.18+, 0 if it stays runnable.
 * `prev_state` is read when __schedule began. A thread found RUNNING here
 * did not block (a pending signal: 5.18-6.11 still pass its sleep state);
 * a blocked one reads its state or TASK_WAKING, never RUNNING (its waker
 * can set that only once it is off the CPU). Before 5.18 the tracepoint
 * passes no prev_state and the programs read task_state(prev), where a
 * waker that came after the dequeue may have put TASK_WAKING: the thread
 * did block, in which state is lost.
 */
static __always_inline long switch_state(struct task_struct *prev, unsigned int prev_state)
{
	return task_state(prev) ? (long)prev_state : 0;
}

#endif
