import ConnGuardCore
import Foundation
import NIOCore

/// `ClusterStore` on an etcd v3 cluster (docs/cluster.md).
public actor EtcdClusterStore: ClusterStore {
    public nonisolated let node: String
    public nonisolated let layout: KeyLayout
    let gateway: EtcdGateway
    let limits: ValueLimits
    let leaseTTL: Int64

    /// What this node wants published: the whole set, so that it can be
    /// written again after an outage or a lost lease.
    private var desired: [IPAddress: String] = [:]
    private var leaseID: Int64?
    /// `desired` may differ from etcd (a failed write, a new lease).
    private var needsSync = false
    private var keepalive: Task<Void, Never>?
    private var closed = false
    /// One address sync at a time (an actor method is re-entered at each await).
    private var syncing = false
    private var syncWaiters: [CheckedContinuation<Void, Never>] = []

    /// How many times a compare-and-swap lost to another writer and was
    /// retried (for tests and metrics).
    public private(set) var casRetries = 0

    public init(node: String, configuration: EtcdConfiguration) throws {
        if let why = KeyLayout.nodeNameProblem(node) { throw ClusterStoreError.invalidArgument(why) }
        guard configuration.leaseTTL >= 2 else { throw ClusterStoreError.invalidArgument("lease TTL under 2 s") }
        self.node = node
        self.layout = KeyLayout(root: configuration.root)
        self.gateway = try EtcdGateway(configuration)
        self.limits = configuration.limits
        self.leaseTTL = configuration.leaseTTL
    }

    public func close() async {
        guard !closed else { return }
        closed = true
        keepalive?.cancel()
        await keepalive?.value
        await gateway.shutdown()
    }

    // MARK: addresses

    public func publishAddresses(_ changes: [IPAddress: String?]) async throws {
        guard !closed else { throw ClusterStoreError.closed }
        for (a, w) in changes {
            if let w {
                if let why = KeyLayout.workloadNameProblem(w) { throw ClusterStoreError.invalidArgument(why) }
                desired[a] = w
            } else {
                desired[a] = nil
            }
        }
        needsSync = true
        startKeepalive()
        try await syncAddresses()
    }

    /// Makes etcd's entries for this node what `desired` says, under the
    /// current lease: reads this node's prefix, then writes only what
    /// differs (in transactions of at most 100 operations, under etcd's
    /// default --max-txn-ops of 128).
    private func syncAddresses() async throws {
        while syncing { await withCheckedContinuation { syncWaiters.append($0) } }
        syncing = true
        defer {
            syncing = false
            if !syncWaiters.isEmpty { syncWaiters.removeFirst().resume() }
        }
        guard needsSync else { return }
        needsSync = false
        do {
            let lease = try await currentLease()
            let prefix = layout.nodePrefix(node)
            let existing = try await rangeAll(prefix: prefix, revision: nil).kvs
            var ops: [RequestOp] = []
            var have: Set<IPAddress> = []
            for kv in existing {
                let key = kv.key.string
                guard case let .success(.address(_, a)) = layout.parse(key) else {
                    ops.append(RequestOp(request_delete_range: DeleteRangeRequest(key: kv.key)))
                    continue
                }
                have.insert(a)
                guard let w = desired[a] else {
                    ops.append(RequestOp(request_delete_range: DeleteRangeRequest(key: kv.key)))
                    continue
                }
                let same = (try? Values.address(kv.value?.data ?? Data(), key: key, limits: limits).get()) == w && kv.lease?.value == lease
                if !same { ops.append(put(a, w, lease)) }
            }
            for (a, w) in desired where !have.contains(a) { ops.append(put(a, w, lease)) }
            var start = 0
            while start < ops.count {
                let chunk = Array(ops[start..<min(start + 100, ops.count)])
                _ = try await gateway.call("/v3/kv/txn", TxnRequest(compare: [], success: chunk, failure: []), as: TxnResponse.self)
                start += chunk.count
            }
        } catch let e as ClusterStoreError {
            needsSync = true
            // The lease expired between the keepalive and the write: a new one next time.
            if case let .refused(m) = e, m.contains("lease not found") { leaseID = nil }
            throw e
        } catch {
            needsSync = true
            throw error
        }
    }

    private func put(_ a: IPAddress, _ w: String, _ lease: Int64) -> RequestOp {
        RequestOp(request_put: PutRequest(key: B64(layout.addressKey(node: node, address: a)), value: B64(Values.addressData(workload: w)), lease: I64(lease)))
    }

    private func currentLease() async throws -> Int64 {
        if let id = leaseID { return id }
        let r = try await gateway.call("/v3/lease/grant", LeaseGrantRequest(TTL: I64(leaseTTL), ID: I64(0)), as: LeaseGrantResponse.self)
        guard let id = r.ID?.value, id != 0 else { throw ClusterStoreError.refused("lease grant: \(r.error ?? "no lease ID")") }
        leaseID = id
        return id
    }

    /// Keeps the lease alive every third of the TTL, and writes the whole
    /// set again when a write failed or the lease was lost (etcd was away
    /// for longer than the TTL, and expired it).
    private func startKeepalive() {
        guard keepalive == nil else { return }
        let period = UInt64(leaseTTL) * 1_000_000_000 / 3
        keepalive = Task { [weak self] in
            while !Task.isCancelled {
                guard let self else { return }
                let healthy = await self.keepaliveOnce()
                try? await Task.sleep(nanoseconds: healthy ? period : min(period, 1_000_000_000))
            }
        }
    }

    private func keepaliveOnce() async -> Bool {
        guard !closed else { return false }
        do {
            if let id = leaseID {
                let r = try await gateway.call("/v3/lease/keepalive", LeaseKeepAliveRequest(ID: I64(id)), as: LeaseKeepAliveEnvelope.self)
                if (r.result?.TTL?.value ?? 0) <= 0 {
                    // Gone: every entry under it was deleted by etcd.
                    leaseID = nil
                    needsSync = true
                }
            }
            if needsSync { try await syncAddresses() }
            return true
        } catch {
            return false
        }
    }

    // MARK: baselines

    @discardableResult
    public func mergeRules(_ rules: [Rule], into workload: String) async throws -> ClusterBaseline {
        let node = self.node
        return try await update(workload) { b in
            b.merge(rules, from: node)
        }!
    }

    @discardableResult
    public func removeRules(_ keys: Set<RuleKey>, from workload: String) async throws -> ClusterBaseline? {
        try await update(workload, createIfMissing: false) { b in
            for k in keys { b.rules[k] = nil }
        }
    }

    @discardableResult
    public func replaceRules(_ rules: [Rule], of workload: String) async throws -> ClusterBaseline {
        let node = self.node
        return try await update(workload) { b in
            b.rules = [:]
            b.merge(rules, from: node)
        }!
    }

    public func baseline(of workload: String) async throws -> ClusterBaseline? {
        if let why = KeyLayout.workloadNameProblem(workload) { throw ClusterStoreError.invalidArgument(why) }
        let key = layout.baselineKey(workload)
        let r = try await gateway.call("/v3/kv/range", RangeRequest(key: B64(key)), as: RangeResponse.self)
        guard let kv = r.kvs?.first else { return nil }
        return try decodeBaseline(kv, workload: workload)
    }

    private func decodeBaseline(_ kv: KeyValue, workload: String) throws -> ClusterBaseline {
        switch Values.baseline(kv.value?.data ?? Data(), key: kv.key.string, workload: workload,
                               revision: kv.mod_revision?.value ?? 0, limits: limits) {
        case let .success(b): return b
        case let .failure(p): throw ClusterStoreError.invalidValue(p)
        }
    }

    /// Read, change, write if nobody wrote in between (etcd compares the
    /// key's mod_revision in the same transaction), else start again from
    /// what the failed transaction read back. A value in the store that is
    /// not valid is never overwritten: it may be a newer agent's.
    private func update(_ workload: String, createIfMissing: Bool = true, _ change: (inout ClusterBaseline) -> Void) async throws -> ClusterBaseline? {
        guard !closed else { throw ClusterStoreError.closed }
        if let why = KeyLayout.workloadNameProblem(workload) { throw ClusterStoreError.invalidArgument(why) }
        let key = layout.baselineKey(workload)
        let first = try await gateway.call("/v3/kv/range", RangeRequest(key: B64(key)), as: RangeResponse.self)
        var current = try first.kvs?.first.map { try decodeBaseline($0, workload: workload) }
        for _ in 0..<50 {
            guard current != nil || createIfMissing else { return nil }
            var next = current ?? ClusterBaseline(workload: workload)
            change(&next)
            guard next.rules.count <= limits.maxRules else {
                throw ClusterStoreError.invalidArgument("baseline of \(workload) would have \(next.rules.count) rules, over the limit of \(limits.maxRules)")
            }
            let data = Values.baselineData(next)
            guard data.count <= limits.maxValueBytes else {
                throw ClusterStoreError.invalidArgument("baseline of \(workload) would take \(data.count) bytes, over the limit of \(limits.maxValueBytes)")
            }
            let txn = TxnRequest(
                compare: [Compare(key: B64(key), mod_revision: I64(current?.revision ?? 0))],
                success: [RequestOp(request_put: PutRequest(key: B64(key), value: B64(data)))],
                failure: [RequestOp(request_range: RangeRequest(key: B64(key)))])
            let r = try await gateway.call("/v3/kv/txn", txn, as: TxnResponse.self)
            if r.succeeded == true {
                next.revision = r.header?.revision?.value ?? 0
                return next
            }
            casRetries += 1
            let kv = r.responses?.first?.response_range?.kvs?.first
            current = try kv.map { try decodeBaseline($0, workload: workload) }
        }
        throw ClusterStoreError.conflict("baseline of \(workload): 50 compare-and-swap attempts lost to other writers")
    }

    // MARK: modes

    @discardableResult
    public func setMode(_ mode: Mode, of workload: String, by who: String) async throws -> ModeSetting {
        guard !closed else { throw ClusterStoreError.closed }
        if let why = KeyLayout.workloadNameProblem(workload) { throw ClusterStoreError.invalidArgument(why) }
        let now = Int64(Date().timeIntervalSince1970 * 1e9)
        let m = ModeSetting(workload: workload, mode: mode, by: who, node: node, at: now)
        _ = try await gateway.call("/v3/kv/put", PutRequest(key: B64(layout.modeKey(workload)), value: B64(Values.modeData(m))), as: PutResponse.self)
        return m
    }

    public func promote(_ workload: String, from: Mode, to mode: Mode, unsetMeans: Mode, by who: String) async throws -> ModeSetting? {
        guard !closed else { throw ClusterStoreError.closed }
        if let why = KeyLayout.workloadNameProblem(workload) { throw ClusterStoreError.invalidArgument(why) }
        let key = layout.modeKey(workload)
        let r = try await gateway.call("/v3/kv/range", RangeRequest(key: B64(key)), as: RangeResponse.self)
        let kv = r.kvs?.first
        let current: Mode
        if let kv {
            switch Values.mode(kv.value?.data ?? Data(), key: key, workload: workload, limits: limits) {
            case let .success(m): current = m.mode
            case let .failure(p): throw ClusterStoreError.invalidValue(p)
            }
        } else {
            current = unsetMeans
        }
        guard current == from else { return nil }
        let m = ModeSetting(workload: workload, mode: mode, by: who, node: node, at: Int64(Date().timeIntervalSince1970 * 1e9))
        let txn = TxnRequest(
            compare: [Compare(key: B64(key), mod_revision: I64(kv?.mod_revision?.value ?? 0))],
            success: [RequestOp(request_put: PutRequest(key: B64(key), value: B64(Values.modeData(m))))],
            failure: [])
        let t = try await gateway.call("/v3/kv/txn", txn, as: TxnResponse.self)
        return t.succeeded == true ? m : nil
    }

    public func checkHealth() async throws {
        guard !closed else { throw ClusterStoreError.closed }
        // Linearizable (the default): answered only with a quorum.
        _ = try await gateway.call("/v3/kv/range", RangeRequest(key: B64(layout.prefix), limit: I64(1)), as: RangeResponse.self)
    }

    public func mode(of workload: String) async throws -> ModeSetting? {
        if let why = KeyLayout.workloadNameProblem(workload) { throw ClusterStoreError.invalidArgument(why) }
        let key = layout.modeKey(workload)
        let r = try await gateway.call("/v3/kv/range", RangeRequest(key: B64(key)), as: RangeResponse.self)
        guard let kv = r.kvs?.first else { return nil }
        switch Values.mode(kv.value?.data ?? Data(), key: key, workload: workload, limits: limits) {
        case let .success(m): return m
        case let .failure(p): throw ClusterStoreError.invalidValue(p)
        }
    }

    // MARK: snapshot and watch

    /// Every key under `prefix` at one revision, in pages (so that no answer
    /// grows without bound with the cluster).
    private func rangeAll(prefix: String, revision: Int64?) async throws -> (kvs: [KeyValue], revision: Int64) {
        var kvs: [KeyValue] = []
        var from = B64(prefix)
        var at = revision
        let end = B64.rangeEnd(prefix)
        while true {
            let r = try await gateway.call("/v3/kv/range", RangeRequest(key: from, range_end: end, limit: I64(500), revision: at.map(I64.init)), as: RangeResponse.self)
            if at == nil { at = r.header?.revision?.value }
            let page = r.kvs ?? []
            kvs += page
            guard r.more == true, let last = page.last else { break }
            from = B64(last.key.data + [0])
        }
        return (kvs, at ?? 0)
    }

    public func snapshot() async throws -> ClusterSnapshot {
        let (kvs, revision) = try await rangeAll(prefix: layout.prefix, revision: nil)
        var s = ClusterSnapshot(revision: revision)
        for kv in kvs {
            for c in changes(for: kv, deleted: false, revision: revision) { s.apply(c) }
        }
        s.revision = revision
        return s
    }

    /// What one key's new value (or deletion) means.
    nonisolated func changes(for kv: KeyValue, deleted: Bool, revision: Int64) -> [ClusterChange] {
        let key = kv.key.string
        let data = kv.value?.data ?? Data()
        switch layout.parse(key) {
        case let .failure(p):
            // A deleted key outside the layout changed nothing we hold.
            return deleted ? [] : [.problem(p, revision: revision)]
        case let .success(.address(node, address)):
            if deleted { return [.address(node: node, address: address, workload: nil, revision: revision)] }
            switch Values.address(data, key: key, limits: limits) {
            case let .success(w): return [.address(node: node, address: address, workload: w, revision: revision)]
            case let .failure(p): return [.problem(p, revision: revision)]
            }
        case let .success(.baseline(w)):
            if deleted { return [.baseline(workload: w, nil, revision: revision)] }
            switch Values.baseline(data, key: key, workload: w, revision: kv.mod_revision?.value ?? revision, limits: limits) {
            case let .success(b): return [.baseline(workload: w, b, revision: revision)]
            case let .failure(p): return [.problem(p, revision: revision)]
            }
        case let .success(.mode(w)):
            if deleted { return [.mode(workload: w, nil, revision: revision)] }
            switch Values.mode(data, key: key, workload: w, limits: limits) {
            case let .success(m): return [.mode(workload: w, m, revision: revision)]
            case let .failure(p): return [.problem(p, revision: revision)]
            }
        }
    }

    public nonisolated func watch(from revision: Int64?) -> AsyncStream<ClusterChange> {
        AsyncStream { continuation in
            let task = Task { await self.runWatch(from: revision, continuation) }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// The watch loop: list (when asked to, or after a compaction), watch
    /// from the revision after the last one delivered, and on any failure
    /// try again (the gateway moves to the next endpoint) from there.
    private nonisolated func runWatch(from start: Int64?, _ out: AsyncStream<ClusterChange>.Continuation) async {
        var last: Int64? = start
        var down: String?
        while !Task.isCancelled, await !self.isClosed {
            do {
                if last == nil {
                    let s = try await snapshot()
                    out.yield(.snapshot(s))
                    last = s.revision
                }
                let create = WatchCreate(key: B64(layout.prefix), range_end: B64.rangeEnd(layout.prefix), start_revision: I64(last! + 1))
                let (endpoint, responses) = try await gateway.openWatch(create)
                var compacted = false
                for try await r in responses {
                    if r.created == true {
                        if down != nil { out.yield(.resumed(revision: last!)); down = nil }
                        continue
                    }
                    if r.canceled == true {
                        if let c = r.compact_revision?.value, c > 0 {
                            // What we missed is gone from etcd: list it all again.
                            compacted = true
                            break
                        }
                        throw ClusterStoreError.refused("\(endpoint) canceled the watch: \(r.cancel_reason ?? "no reason")")
                    }
                    let events = r.events ?? []
                    if events.isEmpty {
                        // A progress notification: everything up to it was delivered.
                        if let h = r.header?.revision?.value { last = max(last!, h) }
                        continue
                    }
                    for e in events {
                        guard let kv = e.kv else { continue }
                        let rev = kv.mod_revision?.value ?? r.header?.revision?.value ?? last!
                        for c in changes(for: kv, deleted: e.type == "DELETE", revision: rev) { out.yield(c) }
                        last = max(last!, rev)
                    }
                }
                if compacted {
                    let s = try await snapshot()
                    out.yield(.snapshot(s))
                    last = s.revision
                    if down != nil { down = nil }
                    continue
                }
            } catch {
                if Task.isCancelled { break }
                if down == nil {
                    down = "\(error)"
                    out.yield(.disconnected(reason: "\(error)"))
                }
            }
            try? await Task.sleep(nanoseconds: 300_000_000)
        }
        out.finish()
    }

    private var isClosed: Bool { closed }
}
