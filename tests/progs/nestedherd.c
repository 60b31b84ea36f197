// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * nestedherd: a thundering herd through nested epoll instances, for
 * tests/e2e_wakeups.rs.
 *
 *   nestedherd [INNER_TIMEOUT_MS]
 *
 * Two threads "nh:worker_0/1" each wait in epoll_wait on an outer epoll
 * instance whose only item is an inner epoll instance, whose only item is
 * one shared, non-blocking listen socket on 127.0.0.1 (an ephemeral port).
 * When the outer one returns, a worker takes the inner one's events
 * (epoll_wait with INNER_TIMEOUT_MS, default 0; -1 blocks until the inner
 * one has an event), accepts once, reads the connection to EOF
 * and closes it. Every connection wakes both workers: one accepts, the
 * other gets EAGAIN or an empty inner list, or sleeps again.
 *
 * It prints "PORT TID0 TID1" once both wait, and on EOF of stdin
 * "accepted A eagain E empty M" and exits.
 *
 * Build: cc -O1 -pthread -o nestedherd nestedherd.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static int lfd;
static int accepted, eagain, empty;
static int tids[2];
static int inner_timeout;
static pthread_barrier_t started;

static void *worker(void *arg)
{
	long i = (long)arg;
	char name[16];
	int inner = epoll_create1(0), outer = epoll_create1(0);
	struct epoll_event e = { .events = EPOLLIN }, evs[4];

	snprintf(name, sizeof(name), "nh:worker_%ld", i);
	pthread_setname_np(pthread_self(), name);
	tids[i] = gettid();
	e.data.fd = lfd;
	if (inner < 0 || outer < 0 || epoll_ctl(inner, EPOLL_CTL_ADD, lfd, &e)) {
		perror("nestedherd: inner");
		exit(1);
	}
	e.data.fd = inner;
	if (epoll_ctl(outer, EPOLL_CTL_ADD, inner, &e)) {
		perror("nestedherd: outer");
		exit(1);
	}
	pthread_barrier_wait(&started);
	for (;;) {
		char buf[256];
		int c;

		if (epoll_wait(outer, evs, 4, -1) <= 0)
			continue;
		if (epoll_wait(inner, evs, 4, inner_timeout) <= 0) {
			__atomic_add_fetch(&empty, 1, __ATOMIC_RELAXED);
			continue;
		}
		c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EAGAIN)
				__atomic_add_fetch(&eagain, 1, __ATOMIC_RELAXED);
			continue;
		}
		__atomic_add_fetch(&accepted, 1, __ATOMIC_RELAXED);
		while (read(c, buf, sizeof(buf)) > 0)
			;
		close(c);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	pthread_t t[2];
	char c;

	if (argc > 1)
		inner_timeout = atoi(argv[1]);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 128) ||
	    getsockname(lfd, (struct sockaddr *)&a, &len)) {
		perror("nestedherd: listen");
		return 1;
	}
	pthread_barrier_init(&started, NULL, 3);
	for (long i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)i)) {
			perror("nestedherd: pthread_create");
			return 1;
		}
	pthread_barrier_wait(&started);
	printf("%d %d %d\n", ntohs(a.sin_port), tids[0], tids[1]);
	fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	printf("accepted %d eagain %d empty %d\n", __atomic_load_n(&accepted, __ATOMIC_RELAXED),
	       __atomic_load_n(&eagain, __ATOMIC_RELAXED), __atomic_load_n(&empty, __ATOMIC_RELAXED));
	fflush(stdout);
	_exit(0);
}
