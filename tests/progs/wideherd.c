// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * wideherd: a thundering herd of many threads, all asleep before the trace
 * starts, for tests/e2e_wakeups.rs.
 *
 *   wideherd NTHREADS
 *
 * NTHREADS threads "wh:worker" each wait in epoll_wait on an epoll instance
 * of their own whose only item is one shared, non-blocking listen socket
 * on 127.0.0.1 (an ephemeral port, no EPOLLEXCLUSIVE): every connection
 * wakes them all, one accepts, the others get EAGAIN or sleep again.
 *
 *   wideherd NTHREADS shared
 *
 * The threads wait on one shared epoll instance instead, the listen socket
 * level-triggered in it: a thread returning with it still ready wakes the
 * next waiter itself (ep_done_scan), and the one that accepts adds the
 * connection to the instance (waking a waiter when its request is already
 * there); any thread answers a "ping" with "pong\n" and closes at EOF.
 *
 * It prints "PORT" once all wait, and on EOF of stdin "accepted A eagain E"
 * and exits.
 *
 * Build: cc -O1 -pthread -o wideherd wideherd.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static int lfd, shared_ep = -1;
static int accepted, eagain;
static pthread_barrier_t started;

/* One shared instance: the listen socket, and the connections it accepts. */
static void *shared_worker(void *arg)
{
	struct epoll_event e;
	char buf[64];

	(void)arg;
	pthread_setname_np(pthread_self(), "wh:worker");
	pthread_barrier_wait(&started);
	for (;;) {
		int c;

		if (epoll_wait(shared_ep, &e, 1, -1) <= 0)
			continue;
		if (e.data.fd == lfd) {
			struct epoll_event ce = { .events = EPOLLIN };

			c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (c < 0) {
				if (errno == EAGAIN)
					__atomic_add_fetch(&eagain, 1, __ATOMIC_RELAXED);
				continue;
			}
			__atomic_add_fetch(&accepted, 1, __ATOMIC_RELAXED);
			ce.data.fd = c;
			epoll_ctl(shared_ep, EPOLL_CTL_ADD, c, &ce);
			continue;
		}
		/* Level-triggered: two threads may get one connection's EOF. */
		c = e.data.fd;
		ssize_t r = read(c, buf, sizeof(buf));
		if (r > 0) {
			if (write(c, "pong\n", 5) < 0)
				continue;
		} else if (r == 0 && !epoll_ctl(shared_ep, EPOLL_CTL_DEL, c, NULL)) {
			close(c);
		}
	}
	return NULL;
}

static void *worker(void *arg)
{
	int ep = epoll_create1(0);
	struct epoll_event e = { .events = EPOLLIN, .data.fd = lfd }, evs[4];

	(void)arg;
	pthread_setname_np(pthread_self(), "wh:worker");
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e)) {
		perror("wideherd: epoll");
		exit(1);
	}
	pthread_barrier_wait(&started);
	for (;;) {
		int c;

		if (epoll_wait(ep, evs, 4, -1) <= 0)
			continue;
		c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EAGAIN)
				__atomic_add_fetch(&eagain, 1, __ATOMIC_RELAXED);
			continue;
		}
		__atomic_add_fetch(&accepted, 1, __ATOMIC_RELAXED);
		close(c);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int n = argc > 1 ? atoi(argv[1]) : 8;
	char c;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (n < 1 || lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 128) ||
	    getsockname(lfd, (struct sockaddr *)&a, &len)) {
		perror("wideherd: listen");
		return 1;
	}
	if (argc > 2 && !strcmp(argv[2], "shared")) {
		struct epoll_event e = { .events = EPOLLIN, .data.fd = lfd };

		shared_ep = epoll_create1(EPOLL_CLOEXEC);
		if (shared_ep < 0 || epoll_ctl(shared_ep, EPOLL_CTL_ADD, lfd, &e)) {
			perror("wideherd: epoll");
			return 1;
		}
	}
	pthread_barrier_init(&started, NULL, n + 1);
	for (int i = 0; i < n; i++) {
		pthread_t t;

		if (pthread_create(&t, NULL, shared_ep < 0 ? worker : shared_worker, NULL)) {
			perror("wideherd: pthread_create");
			return 1;
		}
	}
	pthread_barrier_wait(&started);
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	printf("accepted %d eagain %d\n", __atomic_load_n(&accepted, __ATOMIC_RELAXED),
	       __atomic_load_n(&eagain, __ATOMIC_RELAXED));
	fflush(stdout);
	_exit(0);
}
