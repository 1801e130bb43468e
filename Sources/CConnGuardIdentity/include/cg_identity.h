/*
 * cg_identity.h: the one system call ConnGuardIdentity needs that Swift
 * cannot make itself (open_by_handle_at takes a struct with a flexible array
 * member, and glibc declares it only under _GNU_SOURCE).
 */
#ifndef CG_IDENTITY_H
#define CG_IDENTITY_H

#include <stdint.h>

/*
 * Opens the cgroup v2 directory whose id (kernfs node id, the inode number
 * of the directory, what bpf_get_current_cgroup_id returns) is `cgroup_id`,
 * as a file handle of type FILEID_KERNFS relative to `mount_fd` (an open fd
 * of the cgroup2 mount). O(1): no walk of the tree. Needs
 * CAP_DAC_READ_SEARCH. Returns the new fd, or -errno (ESTALE: no such
 * cgroup any more; EOPNOTSUPP/EPERM: cannot be done here, walk instead).
 * Kernel: fs/kernfs/mount.c, kernfs_fh_to_dentry (since Linux 5.5).
 */
int cg_open_cgroup_by_id(int mount_fd, uint64_t cgroup_id);

/* 1 when `fd` is on a cgroup2 file system (CGROUP2_SUPER_MAGIC), else 0. */
int cg_is_cgroup2(int fd);

#endif
