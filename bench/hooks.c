/*
 * hooks.c: attaches bench/hooks.bpf.o's do-nothing programs until SIGINT or
 * SIGTERM, for scripts/bench-trace. Built there with clang and libbpf.
 *
 *   hooks OBJECT [--accept]
 *
 * --accept also attaches the accept()/accept4() exit programs. Prints
 * "attached" once every program is attached; exits 1 with a message if one
 * cannot be loaded or attached (all are detached on exit either way).
 */
#include <bpf/libbpf.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    struct bpf_object *obj;
    struct bpf_program *prog;
    struct bpf_link *links[8];
    int nlinks = 0;
    int with_accept = argc > 2 && strcmp(argv[2], "--accept") == 0, status = 0;
    struct sigaction sa = {.sa_handler = on_signal};

    if (argc < 2) {
        fprintf(stderr, "usage: hooks OBJECT [--accept]\n");
        return 2;
    }
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    obj = bpf_object__open_file(argv[1], NULL);
    if (!obj) {
        fprintf(stderr, "hooks: cannot open %s\n", argv[1]);
        return 1;
    }
    bpf_object__for_each_program(prog, obj)
        if (strstr(bpf_program__name(prog), "accept"))
            bpf_program__set_autoload(prog, with_accept);
    if (bpf_object__load(obj)) {
        fprintf(stderr, "hooks: cannot load %s\n", argv[1]);
        status = 1;
        goto out;
    }
    bpf_object__for_each_program(prog, obj) {
        if (!bpf_program__autoload(prog))
            continue;
        if (nlinks == 8 || !(links[nlinks++] = bpf_program__attach(prog))) {
            fprintf(stderr, "hooks: cannot attach %s\n", bpf_program__name(prog));
            status = 1;
            goto out;
        }
    }
    printf("attached\n");
    fflush(stdout);
    while (!stop)
        pause();
out:
    while (nlinks > 0)
        bpf_link__destroy(links[--nlinks]); /* NULL-safe */
    bpf_object__close(obj);
    return status;
}
