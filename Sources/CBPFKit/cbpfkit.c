#include "cbpfkit.h"

#include <bpf/bpf.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>

/* Keep at most this much of libbpf's output; a verifier log can be megabytes,
 * and its end (where the rejection is) matters most. */
#define LOG_CAP (256 * 1024)

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char *log_buf;
static size_t log_len;

static int print_to_buffer(enum libbpf_print_level level, const char *fmt, va_list args)
{
    char line[4096];
    int n;

    (void)level;
    n = vsnprintf(line, sizeof(line), fmt, args);
    if (n <= 0)
        return 0;
    if ((size_t)n >= sizeof(line))
        n = sizeof(line) - 1;
    pthread_mutex_lock(&log_lock);
    if (!log_buf)
        log_buf = calloc(1, LOG_CAP + 1);
    if (log_buf) {
        if (log_len + (size_t)n > LOG_CAP) {
            /* drop the oldest half */
            size_t keep = log_len / 2;
            memmove(log_buf, log_buf + (log_len - keep), keep);
            log_len = keep;
        }
        if (log_len + (size_t)n <= LOG_CAP) {
            memcpy(log_buf + log_len, line, (size_t)n);
            log_len += (size_t)n;
            log_buf[log_len] = 0;
        }
    }
    pthread_mutex_unlock(&log_lock);
    return n;
}

void cgbpf_log_install(void)
{
    libbpf_set_print(print_to_buffer);
}

char *cgbpf_log_take(void)
{
    char *out;

    pthread_mutex_lock(&log_lock);
    out = strndup(log_buf ? log_buf : "", log_len);
    log_len = 0;
    if (log_buf)
        log_buf[0] = 0;
    pthread_mutex_unlock(&log_lock);
    return out;
}

struct bpf_object *cgbpf_open_mem(const void *bytes, size_t size, const char *name)
{
    LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name);
    return bpf_object__open_mem(bytes, size, &opts);
}

int cgbpf_datasec_var(const struct bpf_object *obj, const char *section, const char *name,
                      size_t *offset, size_t *size)
{
    struct btf *btf = bpf_object__btf(obj);
    const struct btf_type *sec;
    const struct btf_var_secinfo *vs;
    int id, i;

    if (!btf)
        return -ENOENT;
    id = btf__find_by_name_kind(btf, section, BTF_KIND_DATASEC);
    if (id < 0)
        return -ENOENT;
    sec = btf__type_by_id(btf, id);
    vs = btf_var_secinfos(sec);
    for (i = 0; i < btf_vlen(sec); i++, vs++) {
        const struct btf_type *var = btf__type_by_id(btf, vs->type);
        const char *vname = btf__name_by_offset(btf, var->name_off);
        if (vname && strcmp(vname, name) == 0) {
            *offset = vs->offset;
            *size = vs->size;
            return 0;
        }
    }
    return -ENOENT;
}

long cgbpf_btf_struct_info(const struct btf *btf, const char *struct_name, const char *member)
{
    const struct btf_type *t;
    const struct btf_member *m;
    int id, i;

    id = btf__find_by_name_kind(btf, struct_name, BTF_KIND_STRUCT);
    if (id < 0)
        return -1;
    t = btf__type_by_id(btf, id);
    if (!member)
        return t->size;
    m = btf_members(t);
    for (i = 0; i < btf_vlen(t); i++, m++) {
        const char *mname = btf__name_by_offset(btf, m->name_off);
        if (mname && strcmp(mname, member) == 0)
            return btf_member_bit_offset(t, i) / 8;
    }
    return -1;
}

struct bpf_link *cgbpf_attach_kprobe(struct bpf_program *prog, int retprobe, const char *func)
{
    return bpf_program__attach_kprobe(prog, retprobe != 0, func);
}

long cgbpf_fs_type(const char *path)
{
    struct statfs st;

    if (statfs(path, &st) != 0)
        return -errno;
    return (long)st.f_type;
}

int cgbpf_test_run(int prog_fd, const void *data, size_t size, int repeat, unsigned int *retval,
                   unsigned int *duration_ns)
{
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = data, .data_size_in = (__u32)size, .repeat = repeat);
    int err = bpf_prog_test_run_opts(prog_fd, &opts);

    if (err)
        return err < 0 ? err : -errno;
    *retval = opts.retval;
    *duration_ns = opts.duration;
    return 0;
}
