import Foundation
import Hummingbird
import NIOCore

/// Who is on the other end of an API connection: from the kernel
/// (SO_PEERCRED, fixed when the client connected), never from anything the
/// client sends, so that the audit log and the permission check cannot be
/// lied to.
public struct APIPeer: Sendable, Equatable {
    public let uid: uid_t
    public let gid: gid_t
    public let pid: pid_t
    /// From the user database; nil for a uid without an entry.
    public let userName: String?

    public init(uid: uid_t, gid: gid_t, pid: pid_t) {
        self.uid = uid
        self.gid = gid
        self.pid = pid
        userName = getpwuid(uid).map { String(cString: $0.pointee.pw_name) }
    }

    /// "alice (uid 1001, pid 4242)": the audit log's "who".
    public var auditName: String { "\(userName ?? "uid \(uid)") (uid \(uid), pid \(pid))" }

    /// The peer credentials of an accepted Unix-socket channel.
    static func of(_ channel: any Channel) async throws -> APIPeer {
        guard let provider = channel as? SocketOptionProvider else { throw APIError.forbidden("cannot tell who is asking") }
        let cred: PeerCredentials = try await provider.unsafeGetSocketOption(level: .socket, name: .init(rawValue: SO_PEERCRED)).get()
        // The kernel fills all of it for a connected Unix socket; a pid of 0
        // would mean it did not (and the uid's 0 would then read as root).
        guard cred.pid > 0 else { throw APIError.forbidden("the kernel gave no credentials for this connection") }
        return APIPeer(uid: cred.uid, gid: cred.gid, pid: cred.pid)
    }

    /// Whether the peer's user belongs to `group`: its primary group (from
    /// the kernel), or a supplementary one in the group database, as `id
    /// USER` and sudo's %group rules see it.
    func isMember(of group: gid_t) -> Bool {
        if gid == group { return true }
        guard let userName else { return false }
        var count: Int32 = 64
        while true {
            var groups = [gid_t](repeating: 0, count: Int(count))
            let n = count
            if getgrouplist(userName, gid, &groups, &count) >= 0 {
                return groups.prefix(Int(count)).contains(group)
            }
            guard count > n, count < 65_536 else { return false }  // grown: try again with room
        }
    }
}

/// `struct ucred` (socket(7), SO_PEERCRED): pid, uid, gid, each 32 bits, a
/// fixed kernel ABI. Swift's Glibc leaves it out (it is behind _GNU_SOURCE).
struct PeerCredentials: Sendable {
    var pid: pid_t = 0
    var uid: uid_t = 0
    var gid: gid_t = 0
}

/// Who may do what on the API. Root may do everything; members of the admin
/// group may read and change (modes, imports, prunes); members of the socket
/// group may only read (queries, status, baselines, the audit log). The
/// socket file's own mode is the first fence (0600 root-only, 0660 with a
/// group); this is the second, and the only one that tells reading from
/// changing.
public struct APIAccess: Sendable {
    public enum Level: Sendable { case read, change }

    public let readGroup: (name: String, gid: gid_t)?
    public let adminGroup: (name: String, gid: gid_t)?

    public init(socketGroup: String?, adminGroup: String?) throws {
        func resolve(_ name: String?, _ flag: String) throws -> (String, gid_t)? {
            guard let name else { return nil }
            guard let g = getgrnam(name) else { throw AgentError("\(flag): no group named '\(name)'") }
            return (name, g.pointee.gr_gid)
        }
        readGroup = try resolve(socketGroup, "--socket-group")
        self.adminGroup = try resolve(adminGroup, "--admin-group")
    }

    /// The group that owns the socket file: the socket group, else the admin
    /// group (whose members must reach the socket too); nil: root only.
    public var socketGID: gid_t? { readGroup?.gid ?? adminGroup?.gid }

    /// nil if allowed, else why not (for the 403).
    func refusal(_ peer: APIPeer, _ level: Level) -> String? {
        if peer.uid == 0 { return nil }
        if let a = adminGroup, peer.isMember(of: a.gid) { return nil }
        if level == .read, let r = readGroup, peer.isMember(of: r.gid) { return nil }
        let who = peer.userName ?? "uid \(peer.uid)"
        switch level {
        case .read:
            return "\(who) may not query the agent: that takes root, or membership of the socket or admin group"
        case .change:
            return "\(who) may not change modes or baselines: that takes root, or membership of the admin group"
                + (adminGroup.map { " (\($0.name))" } ?? " (the agent has none: --admin-group)")
        }
    }
}

/// The request context of the local API: Hummingbird's, plus the channel,
/// for the peer's credentials, and the peer once `APIGate` has checked it.
public struct APIRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    let channel: any Channel
    /// Set by APIGate before any route runs.
    var peer: APIPeer?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// In front of every route: an unknown path is a JSON 404, a known path with
/// another method a JSON 405 (with Allow), and a peer without the right is a
/// JSON 403. Routes may rely on `context.peer`.
struct APIGate: RouterMiddleware {
    typealias Context = APIRequestContext
    let access: APIAccess

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        guard let method = APIRoutes.methods[path] else {
            return APIRoutes.errorResponse(.notFound, "no such API path: \(path) (see `connguard --help`)")
        }
        guard request.method == method else {
            var r = APIRoutes.errorResponse(.methodNotAllowed, "\(path) takes \(method.rawValue), not \(request.method.rawValue)")
            r.headers[.allow] = method.rawValue
            return r
        }
        let peer: APIPeer
        do {
            peer = try await APIPeer.of(context.channel)
        } catch {
            return APIRoutes.errorResponse(.forbidden, "cannot tell who is asking: \(error)")
        }
        if let why = access.refusal(peer, method == .get ? .read : .change) {
            return APIRoutes.errorResponse(.forbidden, why)
        }
        var context = context
        context.peer = peer
        return try await next(request, context)
    }
}
