/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * Records shared by the BPF programs and user space. User space reads them
 * through the skeleton's generated `types` module: never mirror by hand.
 * Every record starts with `struct nd_hdr`, whose first field is the tag.
 */
#ifndef NETDRIFT_H
#define NETDRIFT_H

#define ND_COMM_LEN 16
#define ND_MAX_STACK 40
#define ND_MAX_EP_EVENTS 16
#define ND_MAX_COMMS 8

enum nd_rec_type {
	ND_REC_SOCK_READY = 1,
	ND_REC_WAKE = 2,
	ND_REC_SWITCH_IN = 3,
	ND_REC_SWITCH_OUT = 4,
	ND_REC_EPOLL_ENTER = 5,
	ND_REC_EPOLL_EXIT = 6,
	ND_REC_ACCEPT = 7,
	ND_REC_CLOSE = 8,
	ND_REC_SOCK_STATE = 9,
	ND_REC_TASK_NEW = 10,
	ND_REC_TASK_EXIT = 11,
	ND_REC_EPOLL_CTL = 12,
	ND_REC_NAPI = 13,
	ND_REC_HANDLER = 14,
	ND_REC_EPOLL_REG = 15,
};

#define ND_MAX_HANDLERS 256

/* Index into the per-CPU loss counters. */
enum nd_loss {
	ND_LOSS_RINGBUF = 0,	/* ring buffer full: record dropped */
	ND_LOSS_STACK = 1,	/* bpf_get_stack() failed */
	ND_LOSS_MAP_FULL = 2,	/* a state map refused an insert, or task storage could not be allocated */
	ND_LOSS_USER_READ = 3,	/* epoll_event array not readable */
	ND_LOSS_MAX = 4,
};

/* How the socket of a wake-up was found. */
enum nd_ready_hook {
	ND_HOOK_DATA_READY = 1,		/* sock:sk_data_ready (older recordings) */
	ND_HOOK_STATE_CHANGE = 2,	/* sock:inet_sock_set_state (FIN, RST, connect done) */
	ND_HOOK_EPOLL_ITEM = 3,		/* first item on the woken thread's epoll ready list */
	ND_HOOK_ACCEPT = 4,		/* the listener the woken thread waits on in accept */
	ND_HOOK_IO_WAIT = 5,		/* the socket it waits on in read/recv/write/send/connect */
};

/* Which syscall produced an epoll or accept record. */
enum nd_syscall {
	ND_SYS_EPOLL_WAIT = 1,
	ND_SYS_EPOLL_PWAIT = 2,
	ND_SYS_EPOLL_PWAIT2 = 3,
	ND_SYS_ACCEPT = 4,
	ND_SYS_ACCEPT4 = 5,
	ND_SYS_SOCK_IO = 6,	/* read/recv/write/send/connect: only read from a blocked task */
};

/* Syscalls that block on one socket, first argument the fd. */
#define ND_NR_SOCK_IO 10

struct nd_hdr {
	__u16 type;		/* enum nd_rec_type */
	__u16 cpu;		/* CPU that wrote the record */
	/*
	 * Records that CPU could not reserve so far: a change since its
	 * previous record tells user space where in the stream the gap is, so
	 * it can mark the chains open across it.
	 */
	__u32 cpu_lost;
	__u64 ts;		/* CLOCK_MONOTONIC ns */
	__u32 pid;		/* tgid of the task the record is about */
	__u32 tid;
	char comm[ND_COMM_LEN];
};

struct nd_sock {
	__u64 sk;		/* struct sock address */
	__u64 ino;		/* socket inode, 0 when it has no file */
	__u32 netns;		/* netns inode */
	__u16 family;
	__u16 protocol;
	__u16 lport;		/* host order */
	__u16 rport;		/* host order */
	__u8 state;		/* TCP state, kernel numbering */
	__u8 pad[3];
	__u8 laddr[16];
	__u8 raddr[16];
};

/* A socket became readable (sock:sk_data_ready) and woke a target thread. */
struct nd_sock_ready {
	struct nd_hdr hdr;	/* task on the CPU when it fired (the waker side) */
	struct nd_sock sock;
	__u64 seq;		/* joins the wake records it caused */
	__u32 hook;		/* enum nd_ready_hook */
	__s32 newstate;		/* ND_HOOK_STATE_CHANGE: the state it moved to */
	/* --packets: the last packet received on this CPU before (0 if none). */
	__u64 pkt_ts;
	__u32 pkt_len;
	__u32 pkt_ifindex;
	char pkt_dev[ND_COMM_LEN];
};

/* --packets: the NAPI poll that carried a chain's packet ended. */
struct nd_napi {
	struct nd_hdr hdr;
	__u64 seq;		/* nd_sock_ready.seq of the chain */
	__s32 work;		/* packets processed in this poll */
	__s32 budget;
	char dev[ND_COMM_LEN];	/* "" for the per-CPU backlog (loopback, veth, RPS) */
};

/* A target thread was woken (sched:sched_waking). hdr is the waker. */
struct nd_wake {
	struct nd_hdr hdr;
	__u32 target_pid;
	__u32 target_tid;
	char target_comm[ND_COMM_LEN];
	__u64 sock_seq;		/* nd_sock_ready.seq seen just before on this CPU, 0 if none */
	__u64 sk;
	__s32 stack_sz;		/* bytes of kernel stack, or -errno */
	__u32 target_cpu;	/* CPU the woken task last ran on */
	__u32 waker_is_kthread;
	__u32 target_on_rq;	/* still on its run queue (had not switched out): no run-queue wait follows */
	/*
	 * What a stack's class depends on besides the waker and the woken thread:
	 * ND_HOOK_* of sock_seq's socket (0: none) | its TCP state << 8 |
	 * PC_CTX_* (preempt.bpf.h) << 16 | the waker's syscall number (u32, ~0: none) << 32.
	 */
	__u64 stack_sig;
	/* No stack taken: one was taken for the same signature less than stack_reuse_ns ago. */
	__u32 stack_reused;
	__u64 stack[ND_MAX_STACK];
};

/* A target thread got a CPU after a wake-up or a preemption. */
struct nd_switch_in {
	struct nd_hdr hdr;
	__u64 runnable_ts;	/* when it became runnable */
	__u32 prev_cpu;		/* CPU it last ran on */
	__u32 after_preempt;	/* 1: it was preempted, not woken */
	__u32 prev_tid;		/* task it replaced */
	__u32 pad;
	char prev_comm[ND_COMM_LEN];
};

/* A target thread left the CPU. */
struct nd_switch_out {
	struct nd_hdr hdr;
	__u32 preempt;		/* 1: involuntary */
	__u32 state;		/* prev_state */
	__u32 next_tid;
	__u32 woken;		/* 1: a wake-up that found it running was in flight: it is runnable */
	char next_comm[ND_COMM_LEN];
};

struct nd_epoll_enter {
	struct nd_hdr hdr;
	__s32 epfd;
	__s32 maxevents;
	__u32 syscall;		/* enum nd_syscall */
	__u32 call_cpu;		/* CPU of the call (a waker elsewhere may write the record) */
};

/* An application handler was entered (uprobe from --handler / --preset). */
struct nd_handler {
	struct nd_hdr hdr;
	__u32 id;		/* index of the attached symbol */
	__u32 has;		/* bit 0: fd read, bit 1: events read */
	__s64 fd;
	__u64 events;
};

/* What a handler probe reads: argument indexes, -1 for none. */
struct nd_handler_cfg {
	__s32 fd_arg;
	__s32 events_arg;
};

/* epoll_ctl(): lets user space map an epoll_event's data back to its fd. */
struct nd_epoll_ctl {
	struct nd_hdr hdr;
	__s32 epfd;
	__s32 op;
	__s32 fd;
	__u32 events;
	__u64 data;
	__s32 ret;		/* -EFAULT when the event could not be read */
	__u32 pad;
};

/*
 * An accepted socket's registration in the epoll set its thread waits on,
 * read from the kernel's epitem at that thread's next epoll_wait: maps
 * epoll_wait's data word back to the fd without tracing epoll_ctl (a syscall
 * tracepoint every process on the machine would pay for).
 */
struct nd_epoll_reg {
	struct nd_hdr hdr;
	__s32 epfd;
	__s32 fd;
	__u32 events;
	__u32 pad;
	__u64 data;
};

struct nd_epoll_exit {
	struct nd_hdr hdr;
	__u64 enter_ts;
	__s32 epfd;
	__s32 ret;
	__u32 syscall;
	__u32 n_events;		/* entries copied below (<= ND_MAX_EP_EVENTS) */
	__u32 ev_size;		/* sizeof(struct epoll_event): 12 on x86_64 (packed), 16 elsewhere */
	__u32 pad;
	/* The user's epoll_event array as is, in one read: ev_size bytes per entry. */
	__u8 ev_raw[ND_MAX_EP_EVENTS * 16];
};

struct nd_accept {
	struct nd_hdr hdr;
	__u64 enter_ts;
	__s32 listen_fd;
	__s32 ret;		/* new fd, or -errno */
	__u32 syscall;
	__u32 backlog;		/* listen queue length after the accept */
	__u32 max_backlog;
	__u32 pad;
	struct nd_sock listen;
	struct nd_sock peer;	/* the new connection: raddr/rport are the client's */
};

struct nd_close {
	struct nd_hdr hdr;
	__s32 fd;
	__u32 is_socket;
	struct nd_sock sock;
};

/* inet_sock_set_state on a socket the target owns. */
struct nd_sock_state {
	struct nd_hdr hdr;
	struct nd_sock sock;
	__s32 oldstate;
	__s32 newstate;
};

struct nd_task_new {
	struct nd_hdr hdr;	/* the parent */
	__u32 child_pid;
	__u32 child_tid;
	char child_comm[ND_COMM_LEN];
	__u32 reason;		/* 1 fork of a target, 2 exec matching -c, 3 exec of a target (hdr.tid: the thread that ran it) */
	__u32 pad;
};

struct nd_task_exit {
	struct nd_hdr hdr;
	__u32 group_dead;	/* it was the process's last thread */
	__u32 pad;
};

#endif /* NETDRIFT_H */
