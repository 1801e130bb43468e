/*
 * storm.c: a loopback TCP connect/accept/close storm, the load of
 * scripts/bench-trace. Built by that script with `clang -O2 -pthread`.
 *
 * One listener on 127.0.0.1:PORT served by accept threads, and N client
 * threads that each loop: socket, connect, [write a byte, read it back],
 * close. Every connection makes exactly one connect and one accept event for
 * a tracer. Only 127.0.0.1 is ever used.
 *
 *   storm [-d SECONDS] [-t CLIENT_THREADS] [-s ACCEPT_THREADS] [-p PORT] [-e]
 *
 * Prints one line, meant for scripts:
 *   connections=N accepted=N failed=N seconds=S rate=R
 * `connections` counts completed client round trips, `failed` every connect
 * (or echo) that failed; a sane run has failed=0. Exit status 1 if any failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static atomic_bool stop;
static atomic_ulong connections, accepted, failed;
static int listen_fd;
static struct sockaddr_in server;
static int echo; /* -e: one byte each way, so the server really serves */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *acceptor(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            /* EAGAIN from SO_RCVTIMEO: 100 ms without a connection. After
             * `stop` that means the queue is drained, so every connect made
             * is also accepted (and the counts match). */
            if (atomic_load_explicit(&stop, memory_order_relaxed))
                break;
            continue;
        }
        atomic_fetch_add_explicit(&accepted, 1, memory_order_relaxed);
        if (echo) {
            char c;
            if (read(fd, &c, 1) == 1)
                (void)!write(fd, &c, 1);
        }
        close(fd);
    }
    return NULL;
}

static void *client(void *arg)
{
    (void)arg;
    /* Close with RST, not FIN: the client socket skips TIME_WAIT, so its
     * ephemeral port is free again at once and a long storm cannot run out
     * of ports (28k ports / 60 s of TIME_WAIT would cap us near 470 conn/s).
     * The RST also takes the server's side straight to CLOSE. */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    unsigned long ok = 0, bad = 0;

    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            bad++;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        if (connect(fd, (struct sockaddr *)&server, sizeof(server)) < 0) {
            bad++;
            close(fd);
            continue;
        }
        if (echo) {
            char c = 'x';
            if (write(fd, &c, 1) != 1 || read(fd, &c, 1) != 1) {
                bad++;
                close(fd);
                continue;
            }
        }
        close(fd);
        ok++;
    }
    /* Counted locally and added once: no shared cache line in the hot loop. */
    atomic_fetch_add(&connections, ok);
    atomic_fetch_add(&failed, bad);
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: storm [-d SECONDS] [-t CLIENT_THREADS] [-s ACCEPT_THREADS] [-p PORT] [-e]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    double seconds = 10;
    int nclients = 2, nacceptors = 1, port = 47000, opt;

    while ((opt = getopt(argc, argv, "d:t:s:p:eh")) != -1) {
        switch (opt) {
        case 'd': seconds = atof(optarg); break;
        case 't': nclients = atoi(optarg); break;
        case 's': nacceptors = atoi(optarg); break;
        case 'p': port = atoi(optarg); break;
        case 'e': echo = 1; break;
        default: usage();
        }
    }
    if (seconds <= 0 || nclients < 1 || nacceptors < 1 || port < 1 || port > 65535)
        usage();

    server.sin_family = AF_INET;
    server.sin_port = htons(port);
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* 127.0.0.1 only */

    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* accept() honours SO_RCVTIMEO: acceptors wake every 100 ms to see `stop`. */
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    setsockopt(listen_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (bind(listen_fd, (struct sockaddr *)&server, sizeof(server)) < 0 || listen(listen_fd, 4096) < 0) {
        fprintf(stderr, "storm: listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 2;
    }

    pthread_t acc[nacceptors], cli[nclients];
    for (int i = 0; i < nacceptors; i++)
        pthread_create(&acc[i], NULL, acceptor, NULL);
    double start = now();
    for (int i = 0; i < nclients; i++)
        pthread_create(&cli[i], NULL, client, NULL);

    struct timespec dur = {.tv_sec = (time_t)seconds, .tv_nsec = (long)((seconds - (time_t)seconds) * 1e9)};
    while (nanosleep(&dur, &dur) < 0 && errno == EINTR)
        ;
    atomic_store(&stop, 1);
    for (int i = 0; i < nclients; i++)
        pthread_join(cli[i], NULL);
    double elapsed = now() - start; /* clients have stopped: no more connections */
    for (int i = 0; i < nacceptors; i++)
        pthread_join(acc[i], NULL);
    close(listen_fd);

    unsigned long n = atomic_load(&connections), f = atomic_load(&failed);
    printf("connections=%lu accepted=%lu failed=%lu seconds=%.3f rate=%.0f\n",
           n, atomic_load(&accepted), f, elapsed, n / elapsed);
    return f ? 1 : 0;
}
