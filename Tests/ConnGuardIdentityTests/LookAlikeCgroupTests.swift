import ConnGuardCore
import ConnGuardIdentity
import Foundation
import Glibc
import XCTest

/// Issue 13, item 8, as a user would hit it: a real podman container runs
/// under this test's own cgroup subtree, and cgroups made by hand beside it
/// carry its id in the names each runtime uses (`docker-<id>.scope`,
/// `libpod-<id>.scope`, `cri-containerd-<id>.scope`, a kubelet's, a rootless
/// user's `user.slice/libpod-<id>.scope`). A process in each connects to the
/// container. Neither the resolver nor the real agent may give those cgroups
/// the container's workload or id: each is named by its full cgroup path,
/// and the container keeps its own identity. Root only; the agent, the
/// processes, the cgroups, the container and the pins are removed even on
/// failure.
final class LookAlikeCgroupTests: XCTestCase {
    static let image = "localhost/bb:latest"
    let tag = "cglook\(getpid())x\(UInt16.random(in: 0...0xffff))"
    var parent: String { "/\(tag)" }
    var scratch: String { NSTemporaryDirectory() + tag }
    var socket: String { scratch + "/api.sock" }
    var pinRoot: String { "/sys/fs/bpf/\(tag)" }
    var binary: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var dir = (exe as NSString).deletingLastPathComponent
        if dir.hasSuffix(".xctest") { dir = (dir as NSString).deletingLastPathComponent }
        return dir + "/connguard"
    }
    var mount = ""
    var container: String { "\(tag)-srv" }
    var agentPID: Int32 = 0

    override func setUpWithError() throws {
        try Privileged.requireContainers()
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        mount = try XCTUnwrap(CgroupMount.find(), "no cgroup2 mount in /proc/self/mountinfo")
        XCTAssertEqual(mkdir(mount + parent, 0o755), 0, String(cString: strerror(errno)))
    }

    override func tearDown() {
        if agentPID > 0 {
            kill(agentPID, SIGKILL)
            var status: Int32 = 0
            waitpid(agentPID, &status, 0)
        }
        Shell.run(["podman", "rm", "-f", "-t", "0", container])
        // What a failed run left in the hand-made cgroups, then every cgroup
        // of the subtree, in every hierarchy podman made the parent in.
        for dir in CgroupMounts.subtree(mount + parent).reversed() {
            for p in ((try? readFile(dir + "/cgroup.procs")) ?? "").split(separator: "\n") {
                if let pid = Int32(p) { kill(pid, SIGKILL) }
            }
        }
        CgroupMounts.remove(parent)
        XCTAssertNotEqual(access(mount + parent, F_OK), 0, "test cgroups left behind")
        Shell.run([binary, "kill-switch", "--pin-root", pinRoot, "--pin-root-only"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: pinRoot), "pins left behind")
        try? FileManager.default.removeItem(atPath: scratch)
    }

    func testCgroupsNamedAfterARealContainerDoNotGetItsIdentity() throws {
        try startAgent()
        let port = Ports.free()
        let run = Shell.run(["podman", "run", "-d", "--name", container, "--network", "host", "--cgroup-parent", parent,
                             Self.image, "sh", "-c", "while :; do echo hi | nc -l -p \(port); done"])
        XCTAssertEqual(run.status, 0, run.stderr)
        let id = run.trimmed
        XCTAssertTrue(CgroupPathParser.isFullID(id), id)
        XCTAssertTrue(Ports.waitListening(port), "the container never listened on \(port)")
        let real = "\(parent)/libpod-\(id)"
        XCTAssertEqual(access(mount + real, F_OK), 0, "podman did not put the container in \(real)")

        let uid = "1a2b3c4d_5e6f_4a1b_8c9d_0e1f2a3b4c5d"
        let lookAlikes = [
            "\(parent)/docker-\(id).scope",
            "\(parent)/libpod-\(id).scope",
            "\(parent)/cri-containerd-\(id).scope",
            "\(parent)/user.slice/libpod-\(id).scope",
            "\(parent)/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod\(uid).slice/cri-containerd-\(id).scope",
        ]
        var ids: [String: UInt64] = [:]
        for path in lookAlikes {
            XCTAssertTrue(CgroupPathParser.parse(path).isContainer, "\(path) should look like a container's cgroup")
            try FileManager.default.createDirectory(atPath: mount + path, withIntermediateDirectories: true)
            var st = stat()
            XCTAssertEqual(stat(mount + path, &st), 0)
            ids[path] = UInt64(st.st_ino)
        }

        // A process in each: it moves itself in, then connects to the
        // container (again while the server's loop is between two nc).
        for path in lookAlikes {
            let r = Shell.run(["/bin/sh", "-c", "echo $$ > '\(mount + path)/cgroup.procs' || exit 9; "
                + "for i in 1 2 3 4 5 6 7 8 9 10; do busybox nc -w 2 127.0.0.1 \(port) | grep -q hi && exit 0; sleep 0.2; done; exit 1"], timeout: 30)
            XCTAssertEqual(r.status, 0, "\(path): \(r.stderr)")
        }

        // The resolver, as the agent and `connguard trace` build it.
        let resolver = try IdentityResolver.forThisNode()
        for path in lookAlikes {
            let identity = resolver.identity(forCgroup: try XCTUnwrap(ids[path]))
            XCTAssertEqual(identity.workload, path)
            XCTAssertEqual(identity.cgroupPath, path)
            XCTAssertNil(identity.container, path)
            XCTAssertNil(identity.pod, path)
        }
        var st = stat()
        XCTAssertEqual(stat(mount + real, &st), 0)
        let realIdentity = resolver.identity(forCgroup: UInt64(st.st_ino))
        XCTAssertEqual(realIdentity.workload, container)
        XCTAssertEqual(realIdentity.container?.id, id)
        XCTAssertEqual(realIdentity.container?.runtime, .podman)

        // The agent: every connect from a look-alike is stored under its own
        // path, and the accepts that answered them under the container.
        var rows: [[String: Any]] = []
        waitFor("a connect from each look-alike and the accepts") {
            rows = connections(["--port", String(port)])
            let connects = rows.filter { $0["event"] as? String == "connect" }
            let accepts = rows.filter { $0["event"] as? String == "accept" }
            return lookAlikes.allSatisfy { path in connects.contains { cgroupID($0) == ids[path] } } && accepts.count >= lookAlikes.count
        }
        for path in lookAlikes {
            let mine = rows.filter { $0["event"] as? String == "connect" && cgroupID($0) == ids[path] }
            XCTAssertFalse(mine.isEmpty, "no connect stored from \(path)")
            for row in mine {
                XCTAssertEqual(row["workload"] as? String, path)
                XCTAssertTrue(row["container"] is NSNull || row["container"] == nil, "\(path): \(String(describing: row["container"]))")
                XCTAssertTrue(row["pod"] is NSNull || row["pod"] == nil, "\(path): \(String(describing: row["pod"]))")
            }
        }
        let accepts = rows.filter { $0["event"] as? String == "accept" }
        XCTAssertGreaterThanOrEqual(accepts.count, lookAlikes.count)
        for row in accepts {
            XCTAssertEqual(row["workload"] as? String, container)
            XCTAssertEqual((row["container"] as? [String: Any])?["id"] as? String, id)
        }
        // No stored row anywhere gives the container's id or workload to another cgroup.
        for row in rows where (row["container"] as? [String: Any])?["id"] as? String == id || row["workload"] as? String == container {
            XCTAssertEqual(cgroupID(row), UInt64(st.st_ino), "\(row)")
        }
        // Nor a baseline: the container learnt its clients as the look-alikes'
        // own workloads, and nothing outbound, since it connected nowhere.
        var learnt: [[String: Any]] = []
        waitFor("the container's baseline to name every look-alike") {
            learnt = rules(container)
            return lookAlikes.allSatisfy { path in learnt.contains { $0["direction"] as? String == "in" && $0["peer"] as? String == "workload:\(path)" } }
        }
        XCTAssertFalse(learnt.contains { $0["direction"] as? String == "out" }, "\(learnt)")
        XCTAssertFalse(learnt.contains { $0["peer"] as? String == "workload:\(container)" }, "\(learnt)")
        for path in lookAlikes {
            XCTAssertTrue(rules(path).contains { $0["direction"] as? String == "out" && ($0["port"] as? NSNumber)?.intValue == Int(port) },
                          "\(path) has its own baseline")
        }
    }

    // MARK: helpers

    func cgroupID(_ row: [String: Any]) -> UInt64? {
        (row["cgroup_id"] as? NSNumber)?.uint64Value
    }

    func startAgent() throws {
        agentPID = try AgentProcess.start(binary: binary, arguments: ["--db", scratch + "/db", "--socket", socket, "--cgroup-root", parent,
                                                                      "--pin-root", pinRoot, "--log-level", "warning"],
                                          socket: socket, log: scratch + "/agent.log")
    }

    func rules(_ workload: String) -> [[String: Any]] {
        let r = Shell.run([binary, "baseline", "show", workload, "-o", "json", "--socket", socket])
        guard r.status == 0, let o = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return [] }
        return o["rules"] as? [[String: Any]] ?? []
    }

    func connections(_ args: [String]) -> [[String: Any]] {
        let r = Shell.run([binary, "connections", "-o", "json", "--socket", socket] + args)
        XCTAssertEqual(r.status, 0, r.stderr)
        return r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    func waitFor(_ what: String, timeout: Double = 15, _ condition: () -> Bool) {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return }
            usleep(200_000)
        }
        XCTFail("timed out waiting for \(what)")
    }
}

extension CgroupOrigin {
    var isContainer: Bool {
        if case .container = self { return true }
        return false
    }
}
