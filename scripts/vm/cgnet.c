/*
 * cgnet: the network half of scripts/vm/ladder-test.sh, for a guest that has
 * no python: a one-shot TCP server and client. Built with clang -static.
 *
 *   cgnet serve ADDR PORT N   listen on ADDR:PORT, print "ready", accept N
 *                             connections (closing each), exit 0
 *   cgnet handoff ADDR PORT   listen on ADDR:PORT, print "ready", fork a child
 *                             that prints "child PID", accepts one connection
 *                             and exits; the parent (the listener's owner)
 *                             waits for it
 *   cgnet connect ADDR PORT   connect once; print "ok" or the errno name; exit
 *                             0 on success, 1 otherwise
 *   cgnet udpserve ADDR PORT N  bind a UDP socket, print "ready", answer N
 *                             datagrams (recvfrom, sendto back), exit 0
 *   cgnet udpsend ADDR PORT N   send N datagrams from one unconnected socket
 *                             (sendto), reading each answer; print "ok"
 *   cgnet dnsserve ADDR PORT N  a DNS server: print "ready", answer N queries,
 *                             each with one A record, 127.0.0.1, TTL 60
 *   cgnet dnsconnect ADDR PORT TPORT  as glibc does: a connected UDP socket
 *                             asks ADDR:PORT for vm.example.test, then
 *                             connects over TCP to 127.0.0.1:TPORT; "ok"
 * ADDR is an IPv4 or IPv6 literal.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int make_addr(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, addr, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        *len = sizeof(*a4);
        return AF_INET;
    }
    if (inet_pton(AF_INET6, addr, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        *len = sizeof(*a6);
        return AF_INET6;
    }
    fprintf(stderr, "cgnet: bad address %s\n", addr);
    exit(2);
}

/* A UDP socket with a 5 s receive timeout; bound to ss and "ready" printed
 * for a server. -1 if it cannot bind. */
static int udp_socket(int family, int server, struct sockaddr_storage *ss, socklen_t len)
{
    struct timeval tv = {.tv_sec = 5};
    int fd = socket(family, SOCK_DGRAM, 0);

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (!server)
        return fd;
    if (bind(fd, (struct sockaddr *)ss, len)) {
        perror("bind");
        return -1;
    }
    printf("ready\n");
    fflush(stdout);
    return fd;
}

static int dns(const char *cmd, int family, struct sockaddr_storage *ss, socklen_t len, int n)
{
    static const unsigned char query[] = {0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
                                          2, 'v', 'm', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 4, 't', 'e', 's', 't', 0,
                                          0, 1, 0, 1};
    static const unsigned char answer[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1};
    unsigned char buf[512];
    struct sockaddr_storage from;
    socklen_t flen;
    int server = strcmp(cmd, "dnsserve") == 0;
    int fd = udp_socket(family, server, ss, len);

    if (fd < 0)
        return 2;
    if (server) {
        while (n-- > 0) {
            ssize_t r;
            flen = sizeof(from);
            r = recvfrom(fd, buf, sizeof(buf) - sizeof(answer), 0, (struct sockaddr *)&from, &flen);
            if (r < 12) {
                perror("dnsserve");
                return 2;
            }
            buf[2] = 0x81, buf[3] = 0x80; /* an answer, recursion available */
            buf[6] = 0, buf[7] = 1;       /* one answer record */
            memcpy(buf + r, answer, sizeof(answer));
            sendto(fd, buf, r + sizeof(answer), 0, (struct sockaddr *)&from, flen);
        }
        return 0;
    }
    if (connect(fd, (struct sockaddr *)ss, len) || send(fd, query, sizeof(query), 0) != sizeof(query)
        || recv(fd, buf, sizeof(buf), 0) < (ssize_t)(sizeof(query) + sizeof(answer))) {
        printf("dns: %s\n", strerror(errno));
        return 1;
    }
    make_addr("127.0.0.1", n, ss, &len);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)ss, len)) {
        printf("%s\n", strerror(errno));
        return 1;
    }
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int family, fd, one = 1;

    if (argc < 4) {
        fprintf(stderr, "usage: cgnet serve ADDR PORT N | cgnet connect ADDR PORT\n");
        return 2;
    }
    family = make_addr(argv[2], atoi(argv[3]), &ss, &len);
    if (strncmp(argv[1], "dns", 3) == 0 && argc == 5)
        return dns(argv[1], family, &ss, len, atoi(argv[4]));
    if (strncmp(argv[1], "udp", 3) == 0 && argc == 5) {
        struct sockaddr_storage from;
        socklen_t flen;
        char buf[64];
        int n = atoi(argv[4]);
        int server = strcmp(argv[1], "udpserve") == 0;

        fd = udp_socket(family, server, &ss, len);
        if (fd < 0)
            return 2;
        if (server) {
            while (n-- > 0) {
                ssize_t r;
                flen = sizeof(from);
                r = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &flen);
                if (r < 0 || sendto(fd, buf, r, 0, (struct sockaddr *)&from, flen) != r) {
                    perror("udpserve");
                    return 2;
                }
            }
            return 0;
        }
        while (n-- > 0) {
            if (sendto(fd, "ping", 4, 0, (struct sockaddr *)&ss, len) != 4 || recv(fd, buf, sizeof(buf), 0) != 4) {
                printf("%s\n", strerror(errno));
                return 1;
            }
        }
        printf("ok\n");
        return 0;
    }
    fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("socket");
        return 2;
    }
    if (strcmp(argv[1], "serve") == 0 && argc == 5) {
        int n = atoi(argv[4]);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 16)) {
            perror("bind/listen");
            return 2;
        }
        printf("ready\n");
        fflush(stdout);
        while (n-- > 0) {
            int c = accept(fd, NULL, NULL);
            if (c < 0) {
                perror("accept");
                return 2;
            }
            close(c);
        }
        return 0;
    }
    if (strcmp(argv[1], "handoff") == 0) {
        pid_t child;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 16)) {
            perror("bind/listen");
            return 2;
        }
        child = fork();
        if (child == 0) {
            int c;
            printf("child %d\nready\n", (int)getpid());
            fflush(stdout);
            c = accept(fd, NULL, NULL);
            if (c < 0) {
                perror("accept");
                _exit(2);
            }
            close(c);
            _exit(0);
        }
        waitpid(child, NULL, 0);
        return 0;
    }
    if (strcmp(argv[1], "connect") == 0) {
        if (connect(fd, (struct sockaddr *)&ss, len) == 0) {
            printf("ok\n");
            return 0;
        }
        printf("%s\n", errno == ECONNREFUSED ? "ECONNREFUSED" : strerror(errno));
        return 1;
    }
    fprintf(stderr, "cgnet: unknown command %s\n", argv[1]);
    return 2;
}
