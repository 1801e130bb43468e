import CConnGuard

// Every mapping between ConnGuard's types and the codes the BPF programs use,
// in one place beside their definitions in connguard.h (CConnGuard).

extension ConnectionEvent.Direction {
    /// enum cg_direction.
    public var kernelValue: UInt8 {
        switch self {
        case .connect: return UInt8(CG_DIRECTION_CONNECT.rawValue)
        case .accept: return UInt8(CG_DIRECTION_ACCEPT.rawValue)
        }
    }

    public init?(kernel value: UInt8) {
        switch UInt32(value) {
        case CG_DIRECTION_CONNECT.rawValue: self = .connect
        case CG_DIRECTION_ACCEPT.rawValue: self = .accept
        default: return nil
        }
    }
}

extension ConnectionEvent.Outcome {
    /// enum cg_outcome.
    public init?(kernel value: UInt8) {
        switch UInt32(value) {
        case CG_OUTCOME_ESTABLISHED.rawValue: self = .established
        case CG_OUTCOME_FAILED.rawValue: self = .failed
        case CG_OUTCOME_DENIED.rawValue: self = .denied
        default: return nil
        }
    }
}

extension ConnectionEvent.Hook {
    /// enum cg_hook; a code this version does not know is `.unknown`.
    public init(kernel value: UInt8) {
        switch UInt32(value) {
        case CG_HOOK_TP_BTF.rawValue: self = .tracepoint
        case CG_HOOK_FENTRY.rawValue: self = .fentry
        case CG_HOOK_KPROBE.rawValue: self = .kprobe
        case CG_HOOK_CGROUP_CONNECT.rawValue: self = .cgroupConnect
        case CG_HOOK_CGROUP_SKB.rawValue: self = .cgroupSKB
        case CG_HOOK_CGROUP_SOCK_ADDR.rawValue: self = .cgroupSockAddr
        default: self = .unknown
        }
    }
}

extension ConnectionEvent.IPProtocol {
    /// IP protocol numbers (IPPROTO_TCP 6, IPPROTO_UDP 17, fixed by IANA):
    /// cg_connection_event.protocol, cg_repeat_key.protocol.
    public var kernelValue: UInt8 {
        switch self {
        case .tcp: return 6
        case .udp: return 17
        }
    }

    public init?(kernel value: UInt8) {
        switch value {
        case 6: self = .tcp
        case 17: self = .udp
        default: return nil
        }
    }
}

extension Mode {
    /// enum cg_mode: what a cgroup's policy tells the kernel.
    public var kernelValue: UInt8 {
        switch self {
        case .learn: return UInt8(CG_MODE_LEARN.rawValue)
        case .monitor: return UInt8(CG_MODE_MONITOR.rawValue)
        case .enforce: return UInt8(CG_MODE_ENFORCE.rawValue)
        }
    }

    public init?(kernel value: UInt8) {
        switch UInt32(value) {
        case CG_MODE_LEARN.rawValue: self = .learn
        case CG_MODE_MONITOR.rawValue: self = .monitor
        case CG_MODE_ENFORCE.rawValue: self = .enforce
        default: return nil
        }
    }
}
