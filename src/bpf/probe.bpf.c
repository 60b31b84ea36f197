// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * Tiny programs that `netdrift doctor` loads one at a time to learn what this
 * kernel really supports. Each does nothing but exist.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} probe_rb SEC(".maps");

__u64 hits = 0;

SEC("tp_btf/sched_switch")
int BPF_PROG(probe_tp_btf, bool preempt)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("raw_tp/sched_switch")
int probe_raw_tp(void *ctx)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("tracepoint/sched/sched_switch")
int probe_tracepoint(void *ctx)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_epoll_wait")
int probe_syscall_tp(void *ctx)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("fentry/do_epoll_wait")
int BPF_PROG(probe_fentry)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("kprobe/do_epoll_wait")
int BPF_KPROBE(probe_kprobe)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("uprobe")
int BPF_UPROBE(probe_uprobe)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}

/* How trace attaches handlers where the kernel has multi-uprobe links (6.6+). */
SEC("uprobe.multi")
int BPF_UPROBE(probe_uprobe_multi)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(probe_ringbuf, bool preempt)
{
	__u64 *v = bpf_ringbuf_reserve(&probe_rb, sizeof(*v), 0);

	if (v) {
		*v = 1;
		bpf_ringbuf_submit(v, 0);
	}
	return 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} probe_task_storage SEC(".maps");

/* netdrift keeps each target thread's state in task local storage. */
SEC("tp_btf/sched_switch")
int BPF_PROG(probe_task_storage_get, bool preempt, struct task_struct *prev)
{
	__u64 *v = bpf_task_storage_get(&probe_task_storage, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (v) {
		*v += 1;
		__sync_fetch_and_add(&hits, 1);
	}
	return 0;
}

/* netdrift reads a blocked thread's syscall and arguments from its saved registers. */
SEC("tp_btf/sched_waking")
int BPF_PROG(probe_task_pt_regs, struct task_struct *p)
{
	if (bpf_task_pt_regs(p))
		__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("tp_btf/sched_waking")
int BPF_PROG(probe_stack, struct task_struct *p)
{
	/* Zeroed: Linux 6.1's verifier takes the buffer as read ("invalid indirect read from stack"). */
	__u64 st[8] = {};

	if (bpf_get_stack(ctx, st, sizeof(st), 0) > 0)
		__sync_fetch_and_add(&hits, 1);
	return 0;
}

/* What netdrift reads to name a wake-up's socket: the woken thread's epoll ready list. */
SEC("tp_btf/sched_waking")
int BPF_PROG(probe_epoll_ready_list, struct task_struct *p)
{
	if (bpf_task_pt_regs(p) && bpf_core_field_offset(struct eventpoll, rdllist) >= 0 &&
	    bpf_core_field_offset(struct epitem, rdllink) >= 0 && bpf_core_field_exists(struct epitem, ffd))
		__sync_fetch_and_add(&hits, 1);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(probe_inet_sock_set_state, const struct sock *sk)
{
	__sync_fetch_and_add(&hits, 1);
	return 0;
}
