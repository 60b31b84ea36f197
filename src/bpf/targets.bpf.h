/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * Who is traced: shared by netdrift.bpf.c and offwake.bpf.c. User space sets
 * the rodata before load and fills the maps (-p/-t); forks of a target join
 * through the programs' sched_process_fork hooks. The hash maps are the lists
 * (user space reads them, their size caps them); a bit per pid number beside
 * each answers the hooks, which run for every task on the machine: an array
 * lookup the verifier inlines, where a hash lookup cost ~35 ns per run.
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

/* PID_MAX_LIMIT of 64-bit kernels (4M): 512 KiB a map; user space shrinks an unused one to 1. */
#define ND_ID_WORDS (4194304 / 64)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ND_ID_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} tgid_bits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ND_ID_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} tid_bits SEC(".maps");

static __always_inline bool id_bit(void *bits, __u32 id)
{
	__u32 k = id >> 6;
	__u64 *w = bpf_map_lookup_elem(bits, &k);

	return w && (*w >> (id & 63)) & 1;
}

/*
 * Atomic or/and (5.12+; netdrift needs 5.15): other CPUs change the word's
 * other bits, and two threads of a dying process can both see themselves as
 * its last (signal->live is read after both decremented it) and clear its
 * bit twice, which an add of -b would turn into a borrow across the word.
 */
static __always_inline void id_bit_put(void *bits, __u32 id, bool on)
{
	__u32 k = id >> 6;
	__u64 *w = bpf_map_lookup_elem(bits, &k);
	__u64 b = 1ULL << (id & 63);

	if (!w || !(*w & b) == !on)
		return;
	if (on)
		__sync_fetch_and_or(w, b);
	else
		__sync_fetch_and_and(w, ~b);
}

/* Into a target list and its bits; 0, or -1 when the list is full. */
static __always_inline int target_add(void *map, void *bits, __u32 id)
{
	__u8 one = 1;

	if (bpf_map_update_elem(map, &id, &one, BPF_ANY))
		return -1;
	id_bit_put(bits, id, true);
	return 0;
}

static __always_inline void target_del(void *map, void *bits, __u32 id)
{
	id_bit_put(bits, id, false);
	bpf_map_delete_elem(map, &id);
}

/* A target change by user space (the `nd_targets_op` program's context). */
struct nd_target_op {
	__u32 id;
	__u32 is_tid;	/* 1: a -t thread, 0: a process */
	__u32 add;	/* 1: add, 0: drop */
};

/*
 * Run by user space (BPF_PROG_RUN) once the programs are attached, for what
 * changed between its /proc scan and the attach, which no hook saw: a target
 * that exited (its pid may be reused), a child a target forked. Here, not by
 * a write of the word from user space, which would race with the programs'
 * changes to its other bits. Returns 1 when an add finds the list full.
 */
SEC("syscall")
int nd_targets_op(struct nd_target_op *op)
{
	if (op->add)
		return op->is_tid ? target_add(&targets_tid, &tid_bits, op->id) != 0
				  : target_add(&targets_tgid, &tgid_bits, op->id) != 0;
	if (op->is_tid)
		target_del(&targets_tid, &tid_bits, op->id);
	else
		target_del(&targets_tgid, &tgid_bits, op->id);
	return 0;
}

/* Is this process (tgid) or thread (tid) one of the targets? */
static __always_inline bool target_ids(__u32 tgid, __u32 tid)
{
	if (trace_all)
		return tgid != 0 && tgid != self_tgid;
	if (has_tids && id_bit(&tid_bits, tid))
		return true;
	return id_bit(&tgid_bits, tgid);
}

#endif /* NETDRIFT_TARGETS_BPF_H */
