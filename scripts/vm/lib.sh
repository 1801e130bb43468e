# Shared by scripts/vm-test and scripts/bench-rungs (sourced, bash): fetch
# Debian bookworm's 6.1 cloud kernel, build a busybox initramfs around the
# static connguard, boot it under qemu (TCG: KVM is not usable on these
# machines) and read the exit code the guest printed. See shared VMTEST.md.
#
# The caller sets, before calling these:
#   root   the repository
#   work   a scratch folder of its own (.build-*/ is gitignored)
#   log    a function that prints a message to stderr
# Guest protocol: /init prints "VMTEST-START ..." once the guest is up, runs
# the caller's commands, then "VMTEST-EXIT RC ..." with the last one's status,
# and powers off.

# Installs qemu, a static busybox and cpio if missing.
vm_prerequisites() {
    local need=()
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    [[ -x /bin/busybox ]] && /bin/busybox --list 2>/dev/null | grep -qx ip && file -L /bin/busybox | grep -q 'statically linked' || need+=(busybox-static)
    command -v cpio >/dev/null || need+=(cpio)
    if (( ${#need[@]} )); then
        log "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
    fi
}

# Sets vmlinuz to the kernel the cloud meta-package currently depends on,
# unpacked under $work/kernel. The package is fetched with apt-get download
# (never committed), unless $work or another work folder of this checkout
# (.build-vm, .build-rungs) already holds it.
vm_kernel() {
    local pkg deb d
    mkdir -p "$work"
    pkg="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-6\.1\./ { print $2; exit }')"
    [[ -n "$pkg" ]] || { log "cannot find linux-image-6.1.0-*-cloud-amd64 with apt-cache (run apt-get update)"; return 1; }
    if ! ls "$work/$pkg"_*.deb >/dev/null 2>&1; then
        for d in "$root/.build-vm" "$root/.build-rungs"; do
            deb="$(ls "$d/$pkg"_*.deb 2>/dev/null | head -n 1 || true)"
            if [[ -n "$deb" && "$d" != "$work" ]]; then
                log "using $deb"
                cp "$deb" "$work/"
                break
            fi
        done
    fi
    if ! ls "$work/$pkg"_*.deb >/dev/null 2>&1; then
        log "downloading $pkg"
        (cd "$work" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    fi
    deb="$(ls "$work/$pkg"_*.deb | head -n 1)"
    rm -rf "$work/kernel" && mkdir -p "$work/kernel" && dpkg -x "$deb" "$work/kernel"
    vmlinuz="$(ls "$work"/kernel/boot/vmlinuz-* | head -n 1)"
    log "kernel $vmlinuz"
}

# Sets connguard to the static binary: $1 if given (must exist), else built
# with scripts/build-static.
vm_connguard() {
    connguard="${1:-}"
    if [[ -z "$connguard" ]]; then
        "$root/scripts/build-static" >&2
        connguard="$root/.build-static/release/connguard"
    fi
    [[ -x "$connguard" ]] || { log "no connguard binary at $connguard"; return 1; }
}

# vm_initramfs COMMANDS FILE...: writes $work/initrd.gz holding busybox,
# $connguard at /connguard (with the shared libraries it still needs), each
# FILE at /its-name, and an /init that sets the guest up (proc, sysfs,
# devtmpfs, bpffs, tracefs, cgroup2, lo up, no locked-memory limit), runs
# COMMANDS (shell text) and prints the status of the last one as VMTEST-EXIT.
vm_initramfs() {
    local commands="$1" rd="$work/initramfs" f
    shift
    rm -rf "$rd"
    mkdir -p "$rd"/{bin,dev,proc,sys,tmp,etc,root}
    cp /bin/busybox "$rd/bin/busybox"
    cp "$connguard" "$rd/connguard"
    strip "$rd/connguard" 2>/dev/null || true  # debug info is not needed in the guest
    for f in "$@"; do cp "$f" "$rd/$(basename "$f")"; done
    echo "root:x:0:0:root:/root:/bin/sh" >"$rd/etc/passwd"
    echo "root:x:0:" >"$rd/etc/group"
    # Whatever connguard still links dynamically (glibc at least), at the same paths.
    ldd "$connguard" 2>/dev/null | grep -o '/[^ ]*' | sort -u | while read -r lib; do
        mkdir -p "$rd$(dirname "$lib")"
        cp -L "$lib" "$rd$lib"
    done
    log "connguard in the guest needs: $( (ldd "$connguard" 2>/dev/null || echo static) | awk '{print $1}' | tr '\n' ' ')"
    {
        cat <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs nodev /sys/kernel/tracing
mount -t cgroup2 none /sys/fs/cgroup
ip link set lo up
ulimit -l unlimited
export HOME=/root TMPDIR=/tmp
echo  # ends the firmware's last line, which has no newline
echo "VMTEST-START kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) uptime=$(cut -d' ' -f1 /proc/uptime)"
INIT
        printf '%s\n' "$commands"
        cat <<'INIT'
rc=$?
echo "VMTEST-EXIT $rc uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
INIT
    } >"$rd/init"
    chmod +x "$rd/init"
    (cd "$rd" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
    log "initramfs $(stat -c %s "$work/initrd.gz") bytes"
}

# vm_boot CPUS TIMEOUT: boots $vmlinuz with $work/initrd.gz under qemu (TCG),
# console to $work/console.log (carriage returns and escapes removed). Sets vm_rc to the
# guest's VMTEST-EXIT status (empty if there was none: it crashed or timed
# out) and vm_wall to the wall time from qemu start to power-off.
vm_boot() {
    local cpus="$1" limit="$2" t0 t1
    log "booting $(basename "$vmlinuz") under qemu (TCG, $cpus vCPU)"
    t0=$(date +%s)
    # qemu exits 0 whatever the guest did: the marker carries the result.
    timeout "$limit" qemu-system-x86_64 -accel tcg -m 1024 -smp "$cpus" -kernel "$vmlinuz" -initrd "$work/initrd.gz" \
        -append 'console=ttyS0 panic=-1 quiet' -nographic -no-reboot </dev/null >"$work/console.raw" 2>&1 || true
    t1=$(date +%s)
    # Without carriage returns and the firmware's terminal escapes (one of
    # which would otherwise share a line with VMTEST-START).
    tr -d '\r' <"$work/console.raw" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' >"$work/console.log"
    rm -f "$work/console.raw"
    vm_wall=$((t1 - t0))
    vm_rc="$(awk '/^VMTEST-EXIT/ { print $2 }' "$work/console.log")"
}
