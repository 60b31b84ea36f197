// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * fdwake: one thread wakes another through an eventfd and a pipe in turn,
 * for tests/e2e_wakeups.rs.
 *
 *   fdwake [ROUNDS [PERIOD_MS]]
 *
 * Thread "fw:loop" waits in epoll_wait on a set holding an eventfd and a
 * pipe's read end, and reads whichever is ready. Thread "fw:poker" writes
 * the eventfd, sleeps PERIOD_MS (default 20), writes the pipe, sleeps, and
 * so on ROUNDS times (default 10): both writes are write(2) calls of one
 * thread waking one thread, without a socket.
 *
 * It prints its pid once both threads are named and waits for one byte on
 * stdin before starting, so a tracer can attach first; at the end it prints
 * "eventfd N pipe M", the wake-ups its loop handled.
 *
 * Build: cc -O1 -pthread -o fdwake fdwake.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static int efd, pipefd[2], ep;
static int rounds = 10, period_ms = 20;
static int got_efd, got_pipe;
static pthread_barrier_t named, go;

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0)
		;
}

static void *loop_main(void *arg)
{
	struct epoll_event ev[4];

	(void)arg;
	pthread_setname_np(pthread_self(), "fw:loop");
	pthread_barrier_wait(&named);
	pthread_barrier_wait(&go);
	while (got_efd < rounds || got_pipe < rounds) {
		int n = epoll_wait(ep, ev, 4, 5000);

		if (n <= 0) {
			fprintf(stderr, "fdwake: epoll_wait returned %d\n", n);
			exit(1);
		}
		for (int i = 0; i < n; i++) {
			if (ev[i].data.fd == efd) {
				uint64_t v;

				if (read(efd, &v, sizeof(v)) == sizeof(v))
					got_efd += (int)v;
			} else {
				char c;

				if (read(pipefd[0], &c, 1) == 1)
					got_pipe++;
			}
		}
	}
	return NULL;
}

static void *poker_main(void *arg)
{
	uint64_t one = 1;

	(void)arg;
	pthread_setname_np(pthread_self(), "fw:poker");
	pthread_barrier_wait(&named);
	pthread_barrier_wait(&go);
	for (int i = 0; i < rounds; i++) {
		sleep_ms(period_ms);
		if (write(efd, &one, sizeof(one)) != sizeof(one))
			perror("fdwake: write eventfd");
		sleep_ms(period_ms);
		if (write(pipefd[1], "x", 1) != 1)
			perror("fdwake: write pipe");
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct epoll_event e = { .events = EPOLLIN };
	pthread_t l, p;
	char c;

	if (argc > 1)
		rounds = atoi(argv[1]);
	if (argc > 2)
		period_ms = atoi(argv[2]);
	if (rounds <= 0 || period_ms <= 0) {
		fprintf(stderr, "usage: fdwake [ROUNDS [PERIOD_MS]]\n");
		return 2;
	}
	efd = eventfd(0, 0);
	ep = epoll_create1(0);
	if (efd < 0 || ep < 0 || pipe(pipefd)) {
		perror("fdwake: set-up");
		return 1;
	}
	e.data.fd = efd;
	epoll_ctl(ep, EPOLL_CTL_ADD, efd, &e);
	e.data.fd = pipefd[0];
	epoll_ctl(ep, EPOLL_CTL_ADD, pipefd[0], &e);
	pthread_barrier_init(&named, NULL, 3);
	pthread_barrier_init(&go, NULL, 3);
	if (pthread_create(&l, NULL, loop_main, NULL) || pthread_create(&p, NULL, poker_main, NULL)) {
		perror("fdwake: pthread_create");
		return 1;
	}
	pthread_barrier_wait(&named);
	printf("%d\n", (int)getpid());
	fflush(stdout);
	if (read(0, &c, 1) < 0)
		perror("fdwake: read stdin");
	pthread_barrier_wait(&go);
	pthread_join(p, NULL);
	pthread_join(l, NULL);
	printf("eventfd %d pipe %d\n", got_efd, got_pipe);
	fflush(stdout);
	return got_efd == rounds && got_pipe == rounds ? 0 : 1;
}
