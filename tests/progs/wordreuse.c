// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * wordreuse: one epoll data word moved from one live connection to another,
 * as servers that register a pool's connection struct do (apache), for
 * tests/e2e_wakeups.rs.
 *
 *   wordreuse
 *
 * It prints "PORT", accepts two connections A and B, registers A in its
 * epoll instance with the data word 0x5eed, and prints "FD_A FD_B". Thread
 * "wr:loop" then reads one byte from the connection the word stands for at
 * each return. On a byte on stdin it moves the word to B (EPOLL_CTL_DEL A,
 * ADD B; A stays open) and prints "moved"; on EOF of stdin it prints
 * "read N" and exits.
 *
 * Build: cc -O1 -pthread -o wordreuse wordreuse.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define WORD 0x5eed

static int ep, cur, reads;

static void *loop(void *arg)
{
	struct epoll_event e;
	char b;

	(void)arg;
	pthread_setname_np(pthread_self(), "wr:loop");
	for (;;) {
		if (epoll_wait(ep, &e, 1, -1) == 1 && e.data.u64 == WORD &&
		    read(__atomic_load_n(&cur, __ATOMIC_SEQ_CST), &b, 1) == 1)
			__atomic_add_fetch(&reads, 1, __ATOMIC_SEQ_CST);
	}
	return NULL;
}

int main(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct epoll_event e = { .events = EPOLLIN, .data.u64 = WORD };
	socklen_t len = sizeof(a);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ca, cb;
	pthread_t t;
	char ch;

	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 8) ||
	    getsockname(lfd, (struct sockaddr *)&a, &len)) {
		perror("wordreuse: listen");
		return 1;
	}
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	ca = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	cb = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	ep = epoll_create1(EPOLL_CLOEXEC);
	cur = ca;
	if (ca < 0 || cb < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ca, &e) || pthread_create(&t, NULL, loop, NULL)) {
		perror("wordreuse: setup");
		return 1;
	}
	printf("%d %d\n", ca, cb);
	fflush(stdout);
	while (read(0, &ch, 1) > 0) {
		if (epoll_ctl(ep, EPOLL_CTL_DEL, ca, NULL) || epoll_ctl(ep, EPOLL_CTL_ADD, cb, &e)) {
			perror("wordreuse: move");
			return 1;
		}
		__atomic_store_n(&cur, cb, __ATOMIC_SEQ_CST);
		printf("moved\n");
		fflush(stdout);
	}
	printf("read %d\n", __atomic_load_n(&reads, __ATOMIC_SEQ_CST));
	fflush(stdout);
	_exit(0);
}
