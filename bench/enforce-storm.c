/*
 * enforce-storm: a loopback TCP connect/accept storm, for scripts/bench-enforce.
 *
 *   enforce-storm server ADDR THREADS
 *       listens on ADDR port 0, prints the port, accepts and closes forever.
 *   enforce-storm client ADDR PORT THREADS SECONDS
 *       THREADS threads connect and close (RST, so no TIME_WAIT piles up) for
 *       SECONDS; prints "connections N errors E seconds S rate R first_errno X
 *       cpu_seconds C" (rate: conn/s; C: this process's user + system time).
 *       The first failed connect's errno is printed too (EPERM: enforcement).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_storage addr;
static socklen_t addr_len;
static int family;
static atomic_long connections, errors;
static atomic_int first_errno;
static volatile int stop;

static void parse(const char *text, unsigned port)
{
    memset(&addr, 0, sizeof(addr));
    if (strchr(text, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&addr;
        family = a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        if (inet_pton(AF_INET6, text, &a->sin6_addr) != 1) { fprintf(stderr, "bad address %s\n", text); exit(2); }
        addr_len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&addr;
        family = a->sin_family = AF_INET;
        a->sin_port = htons(port);
        if (inet_pton(AF_INET, text, &a->sin_addr) != 1) { fprintf(stderr, "bad address %s\n", text); exit(2); }
        addr_len = sizeof(*a);
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *acceptor(void *arg)
{
    int lfd = (int)(long)arg;
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c >= 0)
            close(c);
    }
    return NULL;
}

static void *connector(void *arg)
{
    struct linger rst = { .l_onoff = 1, .l_linger = 0 };
    (void)arg;
    while (!stop) {
        int fd = socket(family, SOCK_STREAM, 0);
        if (fd < 0) { atomic_fetch_add(&errors, 1); continue; }
        if (connect(fd, (struct sockaddr *)&addr, addr_len) == 0) {
            atomic_fetch_add(&connections, 1);
        } else {
            int expected = 0;
            atomic_compare_exchange_strong(&first_errno, &expected, errno);
            atomic_fetch_add(&errors, 1);
        }
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
        close(fd);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "server") == 0) {
        int threads = atoi(argv[3]), one = 1;
        parse(argv[2], 0);
        int lfd = socket(family, SOCK_STREAM, 0);
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, addr_len) || listen(lfd, 4096)) { perror("listen"); return 1; }
        struct sockaddr_storage bound;
        socklen_t len = sizeof(bound);
        getsockname(lfd, (struct sockaddr *)&bound, &len);
        printf("%u\n", ntohs(((struct sockaddr_in *)&bound)->sin_port)); /* port at the same offset for v6 */
        fflush(stdout);
        pthread_t t;
        for (int i = 1; i < threads; i++)
            pthread_create(&t, NULL, acceptor, (void *)(long)lfd);
        acceptor((void *)(long)lfd);
        return 0;
    }
    if (argc == 6 && strcmp(argv[1], "client") == 0) {
        int threads = atoi(argv[4]);
        double seconds = atof(argv[5]);
        parse(argv[2], (unsigned)atoi(argv[3]));
        pthread_t t[256];
        if (threads < 1 || threads > 256) { fprintf(stderr, "threads: 1..256\n"); return 2; }
        double start = now();
        for (int i = 0; i < threads; i++)
            pthread_create(&t[i], NULL, connector, NULL);
        usleep((useconds_t)(seconds * 1e6));
        stop = 1;
        for (int i = 0; i < threads; i++)
            pthread_join(t[i], NULL);
        double elapsed = now() - start;
        long n = atomic_load(&connections);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
        printf("connections %ld errors %ld seconds %.3f rate %.0f first_errno %d cpu_seconds %.3f\n", n, atomic_load(&errors),
               elapsed, n / elapsed, atomic_load(&first_errno), cpu);
        return 0;
    }
    fprintf(stderr, "usage: %s server ADDR THREADS | client ADDR PORT THREADS SECONDS\n", argv[0]);
    return 2;
}
