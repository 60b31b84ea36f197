/*
 * A traced server whose forked child runs another program (what a worker
 * spawning a helper does). The parent listens on two loopback sockets: A
 * close-on-exec, B inheritable, and prints "ports A B", "fds A B". It
 * serves one connection on A (epoll_wait, accept, read until the client
 * hangs up), then forks and prints "child PID"; in the child a second
 * thread prints "thread TID" and execs this program again as "--child
 * READY_FILE" (the kernel ends the child's other threads and the exec'ing
 * thread goes on under the child's pid), which keeps only B, creates
 * READY_FILE and waits to be killed. The parent serves a second connection
 * on A, kills the child and exits.
 *
 *   execchild READY_FILE
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int listener(int flags, int *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM | flags, 0);

	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 16) || getsockname(s, (struct sockaddr *)&a, &len)) {
		perror("listener");
		exit(1);
	}
	*port = ntohs(a.sin_port);
	return s;
}

/*
 * At a high fd: the new program's loader opens and closes low ones, whose
 * close(2) would forget a stale entry by chance.
 */
static int high_fd(int fd, int at, int cloexec)
{
	int h = fcntl(fd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, at);

	if (h < 0) {
		perror("fcntl");
		exit(1);
	}
	close(fd);
	return h;
}

static char *self_name, *ready_file;

/* Not the leader: exec from a second thread. */
static void *exec_thread(void *arg)
{
	(void)arg;
	printf("thread %ld\n", (long)syscall(SYS_gettid));
	fflush(stdout);
	execl("/proc/self/exe", self_name, "--child", ready_file, (char *)NULL);
	_exit(127);
}

/* One connection on the listener in epoll set ep, read until the client hangs up. */
static void serve_one(int ep, int a)
{
	struct epoll_event ev;
	char buf[64];
	int c;

	if (epoll_wait(ep, &ev, 1, 30000) != 1 || (c = accept(a, NULL, NULL)) < 0)
		exit(1);
	while (read(c, buf, sizeof(buf)) > 0)
		;
	close(c);
}

int main(int argc, char **argv)
{
	int pa, pb, a, b, ep;
	struct epoll_event ev = { .events = EPOLLIN };
	pid_t child;

	if (argc == 3 && strcmp(argv[1], "--child") == 0) {
		FILE *f = fopen(argv[2], "w");

		if (!f)
			return 1;
		fclose(f);
		for (;;)
			pause();
	}
	if (argc != 2) {
		fprintf(stderr, "usage: execchild READY_FILE\n");
		return 2;
	}
	a = high_fd(listener(SOCK_CLOEXEC, &pa), 100, 1);
	b = high_fd(listener(0, &pb), 110, 0);
	ep = epoll_create1(EPOLL_CLOEXEC);
	ev.data.fd = a;
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, a, &ev))
		return 1;
	printf("ports %d %d\nfds %d %d\n", pa, pb, a, b);
	fflush(stdout);
	serve_one(ep, a);
	child = fork();
	if (child < 0)
		return 1;
	if (child == 0) {
		pthread_t t;

		self_name = argv[0];
		ready_file = argv[1];
		if (pthread_create(&t, NULL, exec_thread, NULL))
			_exit(1);
		for (;;)
			pause();
	}
	printf("child %d\n", (int)child);
	fflush(stdout);
	serve_one(ep, a);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	return 0;
}
