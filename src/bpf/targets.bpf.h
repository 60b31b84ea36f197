/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * Who is traced: shared by netdrift.bpf.c and offwake.bpf.c. User space sets
 * the rodata before load and fills the maps (-p/-t); forks of a target join
 * through the programs' sched_process_fork hooks. Untraced tasks cost one
 * hash lookup (two with -t) per hook.
 */
#ifndef NETDRIFT_TARGETS_BPF_H
#define NETDRIFT_TARGETS_BPF_H

/* No -p/-t/-c: every task but netdrift itself. */
const volatile bool trace_all = false;
const volatile bool has_tids = false;
const volatile bool follow_children = true;
const volatile __u32 self_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} targets_tgid SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} targets_tid SEC(".maps");

/* Is this process (tgid) or thread (tid) one of the targets? */
static __always_inline bool target_ids(__u32 tgid, __u32 tid)
{
	if (trace_all)
		return tgid != 0 && tgid != self_tgid;
	if (has_tids && bpf_map_lookup_elem(&targets_tid, &tid))
		return true;
	return bpf_map_lookup_elem(&targets_tgid, &tgid) != NULL;
}

#endif /* NETDRIFT_TARGETS_BPF_H */
