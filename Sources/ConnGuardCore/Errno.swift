import Glibc

/// Symbolic names of the errors a connect can end with, as users grep for them.
public enum ErrnoName {
    public static func name(_ code: Int32) -> String {
        switch code {
        case 0: return ""
        case ECONNREFUSED: return "ECONNREFUSED"
        case ETIMEDOUT: return "ETIMEDOUT"
        case EHOSTUNREACH: return "EHOSTUNREACH"
        case ENETUNREACH: return "ENETUNREACH"
        case ECONNRESET: return "ECONNRESET"
        case ECONNABORTED: return "ECONNABORTED"
        case EPERM: return "EPERM"
        case EACCES: return "EACCES"
        case EADDRNOTAVAIL: return "EADDRNOTAVAIL"
        case EPROTO: return "EPROTO"
        case ENETDOWN: return "ENETDOWN"
        case EHOSTDOWN: return "EHOSTDOWN"
        case EPIPE: return "EPIPE"
        default: return "errno \(code)"
        }
    }
}
