// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * handoff: a listener thread that hands each connection to a worker pool,
 * as apache's event MPM does, for tests/e2e_wakeups.rs.
 *
 *   handoff NWORKERS
 *
 * Thread "ho:listener" waits in epoll_wait on a listen socket on 127.0.0.1
 * (an ephemeral port), accepts, and queues the connection; a condition
 * variable (a futex) wakes one of the idle "ho:worker" threads, which reads
 * the request, answers "pong\n" and closes the connection.
 *
 * It prints "PORT" once every thread waits, and on EOF of stdin "handled H"
 * and exits.
 *
 * Build: cc -O1 -pthread -o handoff handoff.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define QLEN 64

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready = PTHREAD_COND_INITIALIZER;
static int queue[QLEN], head, tail, handled, idle;
static int lfd;

static void *worker(void *arg)
{
	char buf[64];

	(void)arg;
	pthread_setname_np(pthread_self(), "ho:worker");
	for (;;) {
		int c;

		pthread_mutex_lock(&lock);
		idle++;
		while (head == tail)
			pthread_cond_wait(&ready, &lock);
		idle--;
		c = queue[head++ % QLEN];
		pthread_mutex_unlock(&lock);
		if (read(c, buf, sizeof(buf)) > 0 && write(c, "pong\n", 5) == 5)
			__atomic_add_fetch(&handled, 1, __ATOMIC_RELAXED);
		close(c);
	}
	return NULL;
}

static void *listener(void *arg)
{
	int ep = epoll_create1(0);
	struct epoll_event e = { .events = EPOLLIN, .data.fd = lfd };

	(void)arg;
	pthread_setname_np(pthread_self(), "ho:listener");
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e)) {
		perror("handoff: epoll");
		exit(1);
	}
	for (;;) {
		int c;

		if (epoll_wait(ep, &e, 1, -1) <= 0)
			continue;
		c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		pthread_mutex_lock(&lock);
		queue[tail++ % QLEN] = c;
		pthread_cond_signal(&ready);
		pthread_mutex_unlock(&lock);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int n = argc > 1 ? atoi(argv[1]) : 2, waiting;
	pthread_t t;
	char ch;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (n < 1 || lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 128) ||
	    getsockname(lfd, (struct sockaddr *)&a, &len)) {
		perror("handoff: listen");
		return 1;
	}
	for (int i = 0; i < n; i++) {
		if (pthread_create(&t, NULL, worker, NULL)) {
			perror("handoff: pthread_create");
			return 1;
		}
	}
	if (pthread_create(&t, NULL, listener, NULL)) {
		perror("handoff: pthread_create");
		return 1;
	}
	do {
		usleep(1000);
		pthread_mutex_lock(&lock);
		waiting = idle;
		pthread_mutex_unlock(&lock);
	} while (waiting < n);
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	while (read(0, &ch, 1) > 0)
		;
	printf("handled %d\n", __atomic_load_n(&handled, __ATOMIC_RELAXED));
	fflush(stdout);
	_exit(0);
}
