// Helper of ConnGuardStoreTests' kill -9 test, not shipped: appends batches
// to a store forever and prints "committed N" after each commit, until it is
// killed.
//
//   connguard-store-crashtest DB FIRST_BATCH BATCH_SIZE
//
// Batch N holds BATCH_SIZE events with pid N and uid 0..<BATCH_SIZE.
import ConnGuardCore
import ConnGuardStore
import Glibc

/// Unbuffered, so that a line is in the pipe the moment it is printed.
func say(_ text: String, fd: Int32 = 1) {
    var bytes = Array(text.utf8)
    bytes.append(UInt8(ascii: "\n"))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

let args = CommandLine.arguments
guard args.count == 4, let first = Int(args[2]), let size = Int(args[3]), first >= 0, size > 0 else {
    say("usage: connguard-store-crashtest DB FIRST_BATCH BATCH_SIZE", fd: 2)
    exit(2)
}

do {
    let store = try EventStore(path: args[1])
    let client = IPAddress("10.1.0.1")!
    let server = IPAddress("fd00::80")!
    var batch = first
    while true {
        var events: [StoredConnection] = []
        events.reserveCapacity(size)
        for i in 0..<size {
            let accept = i % 3 == 0
            let event = ConnectionEvent(
                timeNanoseconds: 1_700_000_000_000_000_000 + Int64(batch) * 1_000_000 + Int64(i),
                direction: accept ? .accept : .connect, outcome: i % 7 == 0 ? .failed : .established,
                error: i % 7 == 0 ? 111 : 0, pid: UInt32(batch), comm: "crash\(batch % 10)", uid: UInt32(i),
                cgroupID: UInt64(i % 5), source: accept ? client : server, sourcePort: UInt16(40000 + i % 1000),
                destination: accept ? server : client, destinationPort: 443)
            let identity = Identity(workload: "wl-\(i % 4)",
                                    container: ContainerInfo(id: String(repeating: "\(i % 4)", count: 64), runtime: .docker))
            events.append(StoredConnection(event: event, identity: identity, verdict: i % 11 == 0 ? .wouldDeny : .allowed))
        }
        try store.append(events)
        say("committed \(batch)")
        batch += 1
    }
} catch {
    say("connguard-store-crashtest: \(error)", fd: 2)
    exit(1)
}
