// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * uringecho: an echo server on io_uring (tests/e2e_analysis.rs): no
 * epoll_wait and no accept call, every step goes through the ring.
 *
 *   uringecho
 *
 * Listens on a free loopback port and prints "PID PORT". For each
 * connection in turn: accept, recv, send it back, close, each one request
 * waited for in io_uring_wait_cqe.
 *
 * Build: cc -O1 -o uringecho uringecho.c -luring
 */
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

static struct io_uring ring;

/* Submit the prepared request and wait for its result. */
static int run(void)
{
	struct io_uring_cqe *c;
	int res;

	io_uring_submit(&ring);
	if (io_uring_wait_cqe(&ring, &c))
		return -1;
	res = c->res;
	io_uring_cqe_seen(&ring, c);
	return res;
}

int main(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	char buf[256];

	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 64) || getsockname(l, (struct sockaddr *)&a, &len))
		return 1;
	if (io_uring_queue_init(8, &ring, 0))
		return 1;
	printf("%d %d\n", getpid(), ntohs(a.sin_port));
	fflush(stdout);
	for (;;) {
		int fd, n;

		io_uring_prep_accept(io_uring_get_sqe(&ring), l, NULL, NULL, 0);
		if ((fd = run()) < 0)
			continue;
		io_uring_prep_recv(io_uring_get_sqe(&ring), fd, buf, sizeof(buf), 0);
		n = run();
		if (n > 0) {
			io_uring_prep_send(io_uring_get_sqe(&ring), fd, buf, n, 0);
			run();
		}
		io_uring_prep_close(io_uring_get_sqe(&ring), fd);
		run();
	}
}
