#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include "cg_identity.h"

/* include/linux/exportfs.h: handles made by kernfs for cgroupfs. */
#define CG_FILEID_KERNFS 0xfe

int cg_open_cgroup_by_id(int mount_fd, uint64_t cgroup_id)
{
    union {
        struct file_handle fh;
        unsigned char bytes[sizeof(struct file_handle) + sizeof(uint64_t)];
    } h;
    _Static_assert(sizeof(h) >= sizeof(struct file_handle) + sizeof(uint64_t), "handle too small");

    memset(&h, 0, sizeof(h));
    h.fh.handle_bytes = sizeof(uint64_t);
    h.fh.handle_type = CG_FILEID_KERNFS;
    memcpy(h.fh.f_handle, &cgroup_id, sizeof(cgroup_id));
    int fd;
    do {
        fd = open_by_handle_at(mount_fd, &h.fh, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int cg_is_cgroup2(int fd)
{
    struct statfs fs;
    return fstatfs(fd, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC;
}
