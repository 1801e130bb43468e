/* udpflood: a small-datagram UDP flood on loopback, for scripts/bench-udp.
 * A receiver thread binds FLOWS sockets on 127.0.0.1 (consecutive ports from
 * PORT) and reads them with recvfrom; the main thread sends 32-byte datagrams round-robin
 * to them from one unconnected socket for SECONDS. Prints
 * "sent=N received=N rate=R" (R: datagrams received per second).
 *   udpflood -d SECONDS -p PORT -f FLOWS */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FLOWS 256
static int fds[MAX_FLOWS], flows = 16;
static atomic_long received;
static atomic_int stop;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *receiver(void *arg)
{
    struct pollfd p[MAX_FLOWS];
    char buf[64];
    (void)arg;
    for (int i = 0; i < flows; i++) p[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    while (!atomic_load(&stop)) {
        if (poll(p, flows, 100) <= 0) continue;
        for (int i = 0; i < flows; i++)
            if (p[i].revents & POLLIN)
                for (;;) {
                    /* With the sender's address, as a UDP server that answers
                     * reads (a bare recv() is not seen: README, UDP). */
                    struct sockaddr_in from;
                    socklen_t len = sizeof(from);
                    if (recvfrom(fds[i], buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from, &len) <= 0) break;
                    atomic_fetch_add(&received, 1);
                }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int seconds = 5, port = 47100, c;
    while ((c = getopt(argc, argv, "d:p:f:")) != -1) {
        if (c == 'd') seconds = atoi(optarg);
        else if (c == 'p') port = atoi(optarg);
        else if (c == 'f') flows = atoi(optarg);
        else return 2;
    }
    if (flows < 1 || flows > MAX_FLOWS) return 2;
    struct sockaddr_in to[MAX_FLOWS];
    for (int i = 0; i < flows; i++) {
        int big = 4 << 20;
        fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
        setsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
        to[i] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(port + i)};
        inet_pton(AF_INET, "127.0.0.1", &to[i].sin_addr);
        if (bind(fds[i], (struct sockaddr *)&to[i], sizeof(to[i]))) { perror("bind"); return 1; }
    }
    pthread_t t;
    pthread_create(&t, NULL, receiver, NULL);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    char msg[32];
    memset(msg, 'x', sizeof(msg));
    long sent = 0;
    double start = now(), end = start + seconds;
    while (now() < end) {
        for (int k = 0; k < 256; k++) {
            int i = sent % flows;
            if (sendto(s, msg, sizeof(msg), 0, (struct sockaddr *)&to[i], sizeof(to[i])) == sizeof(msg)) sent++;
            else { perror("sendto"); return 1; }
        }
    }
    double took = now() - start;
    usleep(200000);
    atomic_store(&stop, 1);
    pthread_join(t, NULL);
    long r = atomic_load(&received);
    printf("sent=%ld received=%ld rate=%.0f\n", sent, r, r / took);
    return 0;
}
