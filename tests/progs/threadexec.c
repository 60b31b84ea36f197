/*
 * A thread other than the leader runs exec (the kernel ends the other
 * threads; it goes on under the process's pid). It prints its tid, waits
 * for GO_FILE, then execs this program as "--sleep", which sleeps a second
 * in short naps (context switches to trace) and exits.
 *
 *   threadexec GO_FILE
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static char *self_name, *go_file;

static void *exec_thread(void *arg)
{
	(void)arg;
	printf("%ld\n", (long)syscall(SYS_gettid));
	fflush(stdout);
	while (access(go_file, F_OK) != 0)
		usleep(10000);
	execl("/proc/self/exe", self_name, "--sleep", (char *)NULL);
	_exit(127);
}

int main(int argc, char **argv)
{
	pthread_t t;

	if (argc == 2 && strcmp(argv[1], "--sleep") == 0) {
		struct timespec nap = { 0, 100 * 1000 * 1000 };

		for (int i = 0; i < 10; i++)
			nanosleep(&nap, NULL);
		return 0;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: threadexec GO_FILE\n");
		return 2;
	}
	self_name = argv[0];
	go_file = argv[1];
	if (pthread_create(&t, NULL, exec_thread, NULL))
		return 1;
	for (;;)
		pause();
}
