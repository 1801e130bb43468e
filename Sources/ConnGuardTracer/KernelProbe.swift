import BPFKit
import CLibBPF
import ConnGuardCore
import Glibc

/// What the running kernel offers ConnGuard, found by trying (loads and
/// file checks), never by version numbers.
public struct KernelProbeReport {
    public struct Facility {
        public let name: String
        public let available: Bool
        public let detail: String

        public init(name: String, available: Bool, detail: String) {
            self.name = name
            self.available = available
            self.detail = detail
        }
    }

    public var facilities: [Facility] = []
    public var hooks: [HookChoice] = []
    /// The rung chosen automatically.
    public var rung: HookRung?
    /// Each rung tried on its own: nil if it loaded and attached, else why not.
    public var rungs: [(rung: HookRung, refused: String?)] = []
    /// Why tracing cannot work here, if it cannot.
    public var error: String?

    public var json: JSONValue {
        .object([
            ("facilities", .object(facilities.map { ($0.name, .object([("available", .bool($0.available)), ("detail", .string($0.detail))])) })),
            ("rung", rung.map { .string($0.rawValue) } ?? .null),
            ("rungs", .object(rungs.map { ($0.rung.rawValue, .object([("available", .bool($0.refused == nil)), ("detail", .string($0.refused ?? "loads and attaches"))])) })),
            ("hooks", .object(hooks.map { ($0.capability, .object([("rung", .string($0.rung.rawValue)), ("program", .string($0.detail))])) })),
            ("error", error.map { .string($0) } ?? .null),
        ])
    }
}

public enum KernelProbe {
    public static func run() -> KernelProbeReport {
        var r = KernelProbeReport()
        var uts = utsname()
        uname(&uts)
        let release = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        r.facilities.append(.init(name: "kernel", available: true, detail: release))

        let btf = access(Prerequisites.btfPath, R_OK) == 0
        r.facilities.append(.init(name: "BTF", available: btf, detail: Prerequisites.btfPath))
        let mount = CgroupMount.find()
        r.facilities.append(.init(name: "cgroup v2", available: mount != nil, detail: mount ?? "not mounted"))
        let bpffs = (try? readFile("/proc/self/mountinfo"))?.contains(" - bpf ") ?? false
        r.facilities.append(.init(name: "bpffs", available: bpffs, detail: bpffs ? "mounted" : "not mounted (mount -t bpf bpf /sys/fs/bpf)"))
        let kprobes = access("/sys/bus/event_source/devices/kprobe", F_OK) == 0
        r.facilities.append(.init(name: "kprobes", available: kprobes, detail: kprobes ? "kprobe PMU present" : "no kprobe PMU (CONFIG_KPROBES off)"))
        // Mounts tracefs if it is not (as the tracer would).
        let syscallTracepoints = SyscallTracepoints.prepare()
        r.facilities.append(.init(name: "syscall tracepoints", available: syscallTracepoints == nil,
                                  detail: syscallTracepoints ?? "sys_exit_accept and sys_exit_accept4 (name who accepted on the tracepoint rung)"))

        do {
            try Prerequisites.check()
        } catch {
            r.error = "\(error)"
            return r
        }
        let probes: [(String, bpf_prog_type)] = [
            ("program type cgroup/sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR),
            ("program type cgroup_skb", BPF_PROG_TYPE_CGROUP_SKB),
        ]
        for (name, type) in probes {
            let ok = libbpf_probe_bpf_prog_type(type, nil) == 1
            r.facilities.append(.init(name: name, available: ok, detail: ok ? "loads" : "refused"))
        }
        let ringbuf = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nil) == 1
        r.facilities.append(.init(name: "map type ringbuf", available: ringbuf, detail: ringbuf ? "creates" : "refused"))

        // The real test: load and attach each rung on its own, then the
        // automatic choice, and let them go.
        var config = Tracer.Configuration()
        config.ringBufferBytes = 1 << 16
        config.seedListeners = false
        for rung in HookRung.allCases {
            config.forcedRung = rung
            do {
                let t = try Tracer(configuration: config)
                t.close()
                r.rungs.append((rung, nil))
            } catch let e as TracerError {
                r.rungs.append((rung, e.shortReason))
            } catch {
                r.rungs.append((rung, "\(error)"))
            }
        }
        config.forcedRung = nil
        do {
            let t = try Tracer(configuration: config)
            r.hooks = t.hooks
            r.rung = t.rung
            t.close()
        } catch {
            r.error = "\(error)"
        }
        return r
    }
}
