// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * busypoll: an event loop that polls epoll without waiting, for
 * tests/e2e_wakeups.rs.
 *
 *   busypoll [N]
 *
 * Thread "bp:loop" calls epoll_wait(timeout 0) N times (default 200000) on a
 * set holding a pipe's read end; thread "bp:poker" writes one byte into the
 * pipe every 10 ms, which the loop reads when a poll returns it. It prints
 * its pid, starts on one byte of stdin, and at the end prints
 * "calls N returned R", R the calls that returned an event.
 *
 * Build: cc -O1 -pthread -o busypoll busypoll.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

static int pipefd[2], ep;
static long calls = 200000;
static volatile int done;
static pthread_barrier_t named, go;

static void *poker(void *arg)
{
	struct timespec ts = { 0, 10 * 1000000L };

	(void)arg;
	pthread_setname_np(pthread_self(), "bp:poker");
	pthread_barrier_wait(&named);
	pthread_barrier_wait(&go);
	while (!done) {
		nanosleep(&ts, NULL);
		if (write(pipefd[1], "x", 1) != 1)
			break;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct epoll_event e = { .events = EPOLLIN }, out[4];
	long returned = 0;
	pthread_t p;
	char c;

	if (argc > 1)
		calls = atol(argv[1]);
	ep = epoll_create1(0);
	if (calls <= 0 || ep < 0 || pipe(pipefd)) {
		fprintf(stderr, "usage: busypoll [N]\n");
		return 2;
	}
	e.data.fd = pipefd[0];
	epoll_ctl(ep, EPOLL_CTL_ADD, pipefd[0], &e);
	pthread_setname_np(pthread_self(), "bp:loop");
	pthread_barrier_init(&named, NULL, 2);
	pthread_barrier_init(&go, NULL, 2);
	if (pthread_create(&p, NULL, poker, NULL)) {
		perror("busypoll: pthread_create");
		return 1;
	}
	pthread_barrier_wait(&named);
	printf("%d\n", (int)getpid());
	fflush(stdout);
	if (read(0, &c, 1) < 0)
		perror("busypoll: read stdin");
	pthread_barrier_wait(&go);
	for (long i = 0; i < calls; i++) {
		if (epoll_wait(ep, out, 4, 0) > 0) {
			returned++;
			if (read(pipefd[0], &c, 1) != 1)
				perror("busypoll: read");
		}
	}
	done = 1;
	pthread_join(p, NULL);
	printf("calls %ld returned %ld\n", calls, returned);
	fflush(stdout);
	return 0;
}
