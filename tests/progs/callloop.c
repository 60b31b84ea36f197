/* Calls a noinline function N times once a line arrives on stdin and prints
 * the nanoseconds per call: the cost of a uprobe on it is the difference
 * between a run with netdrift's --handler on it and one without. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((noinline)) int netdrift_bench_call(int fd, int events)
{
	__asm__ volatile("" ::: "memory");
	return fd + events;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	char line[16];
	struct timespec a, b;
	volatile int sink = 0;

	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof line, stdin))
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		sink += netdrift_bench_call((int)i, 2);
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
	return 0;
}
