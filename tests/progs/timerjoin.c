// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * timerjoin: a connection reset on one CPU while a thread of the server
 * sleeps on a short timer there, for tests/e2e_wakeups.rs.
 *
 *   timerjoin serve N         the server: prints "PID PORT", waits for one
 *                             byte on stdin, ends after N connections closed
 *   timerjoin client PORT N   the client: N connections, each reset
 *
 * Server thread "tj:loop" (CPU 1) accepts and reads in epoll_wait; thread
 * "tj:sleeper" (CPU 0) sleeps 300 us at a time, nothing else. The client,
 * pinned to CPU 0, connects, waits, closes with SO_LINGER 0 (an RST: the
 * server's socket goes to CLOSE in the client's syscall, the last state
 * change on CPU 0) and then spins 2 ms on CPU 0: the sleeper's timer
 * fires in that time, an irq interrupting the client that woke tj:loop.
 * That wake-up belongs to the timer, not to the reset: the server's
 * sleeper is in no socket call.
 *
 * The server prints "closed N" at the end, the connections it saw end.
 *
 * Build: cc -O1 -pthread -o timerjoin timerjoin.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int n_conns, closed;
static volatile int done;
static int lfd, ep;
static pthread_barrier_t named, go;

static void pin(int cpu)
{
	cpu_set_t s;

	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	if (sched_setaffinity(0, sizeof(s), &s))
		perror("timerjoin: sched_setaffinity");
}

static long long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void *loop_main(void *arg)
{
	struct epoll_event ev[8], e = { .events = EPOLLIN };

	(void)arg;
	pin(1);
	pthread_setname_np(pthread_self(), "tj:loop");
	pthread_barrier_wait(&named);
	pthread_barrier_wait(&go);
	while (closed < n_conns) {
		int n = epoll_wait(ep, ev, 8, 10000);

		if (n <= 0) {
			fprintf(stderr, "timerjoin: epoll_wait returned %d\n", n);
			exit(1);
		}
		for (int i = 0; i < n; i++) {
			char buf[64];
			int fd = ev[i].data.fd;

			if (fd == lfd) {
				int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);

				if (c >= 0) {
					e.data.fd = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
				}
			} else if (read(fd, buf, sizeof(buf)) <= 0) {
				close(fd);
				closed++;
			}
		}
	}
	done = 1;
	return NULL;
}

static void *sleeper_main(void *arg)
{
	(void)arg;
	pin(0);
	pthread_setname_np(pthread_self(), "tj:sleeper");
	pthread_barrier_wait(&named);
	pthread_barrier_wait(&go);
	while (!done) {
		struct timespec ts = { 0, 300000 };

		nanosleep(&ts, NULL);
	}
	return NULL;
}

static int serve(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct epoll_event e = { .events = EPOLLIN };
	socklen_t al = sizeof(a);
	pthread_t l, s;
	char c;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	ep = epoll_create1(0);
	if (lfd < 0 || ep < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 64) ||
	    getsockname(lfd, (struct sockaddr *)&a, &al)) {
		perror("timerjoin: listen");
		return 1;
	}
	e.data.fd = lfd;
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e);
	pthread_barrier_init(&named, NULL, 3);
	pthread_barrier_init(&go, NULL, 3);
	if (pthread_create(&l, NULL, loop_main, NULL) || pthread_create(&s, NULL, sleeper_main, NULL)) {
		perror("timerjoin: pthread_create");
		return 1;
	}
	pthread_barrier_wait(&named);
	printf("%d %d\n", (int)getpid(), ntohs(a.sin_port));
	fflush(stdout);
	if (read(0, &c, 1) < 0)
		perror("timerjoin: read stdin");
	pthread_barrier_wait(&go);
	pthread_join(l, NULL);
	pthread_join(s, NULL);
	printf("closed %d\n", closed);
	fflush(stdout);
	return closed == n_conns ? 0 : 1;
}

static int client(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct linger lg = { 1, 0 };

	pin(0);
	for (int i = 0; i < n_conns; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct timespec pause = { 0, 20000000 };
		long long t;

		if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a))) {
			perror("timerjoin: connect");
			return 1;
		}
		/* Accepted, and tj:loop back asleep in epoll_wait. */
		nanosleep(&pause, NULL);
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(fd);
		for (t = now_ns(); now_ns() - t < 2000000;)
			;
		nanosleep(&pause, NULL);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "serve")) {
		n_conns = atoi(argv[2]);
		if (n_conns > 0)
			return serve();
	} else if (argc == 4 && !strcmp(argv[1], "client")) {
		n_conns = atoi(argv[3]);
		if (n_conns > 0)
			return client(atoi(argv[2]));
	}
	fprintf(stderr, "usage: timerjoin serve N | timerjoin client PORT N\n");
	return 2;
}
