// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * helperwake: a helper thread woken once, then asleep for good, beside a
 * main thread woken often (tests/e2e_analysis.rs).
 *
 *   helperwake [N [PERIOD_MS [TAIL_MS]]]
 *
 * Like redis's jemalloc_bg_thd: thread "hw:helper" waits on a condition
 * variable (a futex); main signals it once, it runs and waits again, never
 * signalled again. Main then sleeps PERIOD_MS (default 20) N times (default
 * 20), prints "slept" and sleeps TAIL_MS (default 1500) more before exiting.
 * Each of main's sleeps ends in a timer wake-up of its own.
 *
 * It prints its pid once the helper waits, and waits for one byte on stdin
 * before starting, so a tracer can attach first.
 *
 * Build: cc -O1 -pthread -o helperwake helperwake.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int signalled, waiting;

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static void *helper(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "hw:helper");
	pthread_mutex_lock(&mu);
	waiting = 1;
	pthread_cond_broadcast(&cv);
	while (!signalled)
		pthread_cond_wait(&cv, &mu);
	/* Woken once: back to sleep for the rest of the process's life. */
	while (signalled < 2)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	return NULL;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 20;
	int period = argc > 2 ? atoi(argv[2]) : 20;
	int tail = argc > 3 ? atoi(argv[3]) : 1500;
	pthread_t th;
	char go;

	pthread_create(&th, NULL, helper, NULL);
	pthread_mutex_lock(&mu);
	while (!waiting)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	printf("%d\n", getpid());
	fflush(stdout);
	if (read(0, &go, 1) != 1)
		return 1;
	pthread_mutex_lock(&mu);
	signalled = 1;
	pthread_mutex_unlock(&mu);
	/*
	 * Signalled after the unlock: signalled under the lock, the helper
	 * could wake, find the mutex held and be woken a second time by the
	 * unlock's futex wake-up.
	 */
	pthread_cond_signal(&cv);
	for (int i = 0; i < n; i++)
		sleep_ms(period);
	printf("slept\n");
	fflush(stdout);
	sleep_ms(tail);
	return 0;
}
