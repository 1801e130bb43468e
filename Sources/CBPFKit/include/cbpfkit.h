/*
 * C shims for what Swift cannot call directly in libbpf: the va_list print
 * callback, LIBBPF_OPTS-style option structs and static inline helpers.
 * Names carry the cgbpf_ prefix.
 */
#ifndef CBPFKIT_H
#define CBPFKIT_H

#include <stddef.h>
#include <bpf/libbpf.h>
#include <bpf/btf.h>

/* libbpf's messages (including the verifier log) go to an in-memory buffer
 * instead of stderr. cgbpf_log_take() returns what was printed since the last
 * take, as a malloc'd string the caller frees. Thread-safe. */
void cgbpf_log_install(void);
char *cgbpf_log_take(void);

/* bpf_object__open_mem with an object name (the opts struct is a macro). */
struct bpf_object *cgbpf_open_mem(const void *bytes, size_t size, const char *name);

/* Offset and size of global variable `name` in datasec `section` (".rodata",
 * ".bss") of the object's BTF, so user space can set `const volatile` knobs
 * before load. Returns 0, or -ENOENT. */
int cgbpf_datasec_var(const struct bpf_object *obj, const char *section, const char *name,
                      size_t *offset, size_t *size);

/* Size and member offset of a struct in a BTF (for layout checks).
 * member == NULL: returns the struct size. -1 if not found. */
long cgbpf_btf_struct_info(const struct btf *btf, const char *struct_name, const char *member);

/* Attach a tracing program (fentry/fexit/tp_btf) or kprobe by name. */
struct bpf_link *cgbpf_attach_kprobe(struct bpf_program *prog, int retprobe, const char *func);

/* BPF_PROG_TEST_RUN: runs the program `repeat` times on `data` (for skb
 * programs, an Ethernet frame) in the kernel, without attaching it. Returns 0
 * or -errno; *retval is the program's return value, *duration_ns the mean
 * time per run. */
int cgbpf_test_run(int prog_fd, const void *data, size_t size, int repeat, unsigned int *retval,
                   unsigned int *duration_ns);

/* The filesystem type (statfs f_type: BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, ...)
 * of the file at path, or -errno. Swift's Glibc module lacks sys/vfs.h. */
long cgbpf_fs_type(const char *path);

#endif
