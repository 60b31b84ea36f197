// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * blockaccept: a thread-per-connection echo server with no epoll
 * (tests/e2e_analysis.rs).
 *
 *   blockaccept
 *
 * Listens on a free loopback port and prints "PID PORT". Main blocks in
 * accept(); each connection gets a thread that blocks in read(), echoes what
 * it reads and closes the socket at end of file.
 *
 * Build: cc -O1 -pthread -o blockaccept blockaccept.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

static void *serve(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char buf[256];
	ssize_t n;

	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if (write(fd, buf, n) != n)
			break;
	close(fd);
	return NULL;
}

int main(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0);

	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 64) || getsockname(l, (struct sockaddr *)&a, &len))
		return 1;
	printf("%d %d\n", getpid(), ntohs(a.sin_port));
	fflush(stdout);
	for (;;) {
		int c = accept(l, NULL, NULL);
		pthread_t th;

		if (c < 0)
			continue;
		if (pthread_create(&th, NULL, serve, (void *)(intptr_t)c))
			close(c);
		else
			pthread_detach(th);
	}
}
