// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * pipewake: a known off-wake pattern for tests/e2e_offwake.rs.
 *
 *   pipewake [N [PERIOD_MS]]
 *
 * Thread "pw:reader" blocks in netdrift_test_blocked_reader(), reading a
 * pipe one byte at a time; thread "pw:writer", in netdrift_test_waker_writer(),
 * sleeps PERIOD_MS (default 50) then writes one byte, N times (default 20),
 * then closes the pipe and both exit. The reader is therefore blocked about
 * N * PERIOD_MS, woken each time by the writer's write().
 *
 * It prints its pid once both threads are named and waits for one byte on
 * stdin before starting, so a tracer can attach first.
 *
 * Build: cc -O1 -fno-omit-frame-pointer -pthread -o pipewake pipewake.c
 *
 * Frame-pointer unwinding cannot see the direct caller of a libc syscall
 * wrapper (read() and write() set up no frame, so the return address into
 * their caller is skipped): the distinctive functions call them through one
 * small helper, and appear as that helper's caller.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline, noclone))

static int pipefd[2];
static int n_writes = 20;
static int period_ms = 50;
static pthread_barrier_t named, go;

NOINLINE static ssize_t pw_read1(int fd, char *c)
{
	ssize_t r = read(fd, c, 1);

	__asm__ volatile("" ::: "memory");	/* not a tail call */
	return r;
}

NOINLINE static ssize_t pw_write1(int fd, const char *c)
{
	ssize_t r = write(fd, c, 1);

	__asm__ volatile("" ::: "memory");
	return r;
}

NOINLINE long netdrift_test_blocked_reader(int fd)
{
	long n = 0;
	char c;

	while (pw_read1(fd, &c) == 1)
		n++;
	__asm__ volatile("" ::: "memory");
	return n;
}

NOINLINE static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0)
		;
}

NOINLINE void netdrift_test_waker_writer(int fd, int n, int ms)
{
	for (int i = 0; i < n; i++) {
		sleep_ms(ms);
		if (pw_write1(fd, "x") != 1) {
			perror("pipewake: write");
			exit(1);
		}
	}
	__asm__ volatile("" ::: "memory");
}

static void *reader_main(void *arg)
{
	long n;

	(void)arg;
	pthread_setname_np(pthread_self(), "pw:reader");
	pthread_barrier_wait(&named);
	pthread_barrier_wait(&go);
	n = netdrift_test_blocked_reader(pipefd[0]);
	return (void *)n;
}

static void *writer_main(void *arg)
{
	(void)arg;
	pthread_setname_np(pthread_self(), "pw:writer");
	pthread_barrier_wait(&named);
	pthread_barrier_wait(&go);
	netdrift_test_waker_writer(pipefd[1], n_writes, period_ms);
	close(pipefd[1]);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t r, w;
	void *got;
	char c;

	if (argc > 1)
		n_writes = atoi(argv[1]);
	if (argc > 2)
		period_ms = atoi(argv[2]);
	if (n_writes <= 0 || period_ms <= 0) {
		fprintf(stderr, "usage: pipewake [N [PERIOD_MS]]\n");
		return 2;
	}
	if (pipe(pipefd)) {
		perror("pipewake: pipe");
		return 1;
	}
	pthread_barrier_init(&named, NULL, 3);
	pthread_barrier_init(&go, NULL, 3);
	if (pthread_create(&r, NULL, reader_main, NULL) || pthread_create(&w, NULL, writer_main, NULL)) {
		perror("pipewake: pthread_create");
		return 1;
	}
	pthread_barrier_wait(&named);
	printf("%d\n", (int)getpid());
	fflush(stdout);
	/* Start when told (or at EOF). */
	if (read(0, &c, 1) < 0)
		perror("pipewake: read stdin");
	pthread_barrier_wait(&go);
	pthread_join(w, NULL);
	pthread_join(r, &got);
	printf("read %ld bytes\n", (long)got);
	return (long)got == n_writes ? 0 : 1;
}
