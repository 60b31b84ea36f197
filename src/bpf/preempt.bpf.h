/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * This CPU's preempt_count without a ksym, shared by netdrift.bpf.c and
 * offwake.bpf.c. Kernels without CONFIG_KALLSYMS_ALL cannot resolve the
 * address of a per-CPU variable; this CPU's `struct rq` is per-CPU data
 * too, so __preempt_count sits at a fixed distance from it, which user
 * space reads from the BTF of the per-CPU section and sets before load.
 */
#ifndef NETDRIFT_PREEMPT_BPF_H
#define NETDRIFT_PREEMPT_BPF_H

#define SOFTIRQ_OFFSET 0x00000100
#define HARDIRQ_MASK 0x000f0000
#define NMI_MASK 0x00f00000

const volatile bool pc_via_rq = false;
const volatile __s64 pc_rq_delta = 0;
/* Distance to this CPU's cpu_number, to check the arithmetic; 0: no check. */
const volatile __s64 cpu_rq_delta = 0;

struct thread_info___pc {
	__u64 preempt_count;
} __attribute__((preserve_access_index));

/* arm64 and others keep it in thread_info. */
struct task_struct___pc {
	struct thread_info___pc thread_info;
} __attribute__((preserve_access_index));

/* preempt_count through this CPU's run queue or thread_info; -1: not available. */
static __always_inline __s64 preempt_count_noksym(void)
{
	struct task_struct *cur = bpf_get_current_task_btf();
	__u32 this_cpu = bpf_get_smp_processor_id();
	struct rq *rq;
	int cpu = -1, pc = 0;

	if (pc_via_rq && bpf_core_field_exists(cur->se.cfs_rq) && bpf_core_field_exists(struct cfs_rq, rq)) {
		/* The running task's cfs_rq is on this CPU's rq (checked below). */
		rq = BPF_CORE_READ(cur, se.cfs_rq, rq);
		if (rq && BPF_CORE_READ(rq, cpu) == this_cpu &&
		    !(cpu_rq_delta && (bpf_probe_read_kernel(&cpu, sizeof(cpu), (void *)rq + cpu_rq_delta) || cpu != this_cpu)) &&
		    !bpf_probe_read_kernel(&pc, sizeof(pc), (void *)rq + pc_rq_delta))
			return (__u32)pc;
	}
	if (bpf_core_field_exists(((struct task_struct___pc *)0)->thread_info.preempt_count))
		return (__u32)BPF_CORE_READ((struct task_struct___pc *)cur, thread_info.preempt_count);
	return -1;
}

/* The context preempt_count says the CPU is in. */
#define PC_CTX_TASK	0
#define PC_CTX_SOFTIRQ	1	/* serving a softirq */
#define PC_CTX_HARDIRQ	2
#define PC_CTX_NMI	3
#define PC_CTX_UNKNOWN	4	/* preempt_count not readable (pc < 0) */

static __always_inline __u32 ctx_of_preempt_count(__s64 pc)
{
	if (pc < 0)
		return PC_CTX_UNKNOWN;
	if (pc & NMI_MASK)
		return PC_CTX_NMI;
	if (pc & HARDIRQ_MASK)
		return PC_CTX_HARDIRQ;
	if (pc & SOFTIRQ_OFFSET)
		return PC_CTX_SOFTIRQ;
	return PC_CTX_TASK;
}

#endif
