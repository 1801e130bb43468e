import ConnGuardCore
import XCTest

/// Which workload holds an address of this node, from the namespaces the
/// node shows; and the parsers of those namespaces' /proc files.
final class AddressBookTests: XCTestCase {
    func ip(_ s: String) -> IPAddress { IPAddress(s)! }

    func testAnAddressNamesTheOneWorkloadHoldingIt() {
        var book = AddressBook()
        var changes = book.update(cgroup: 1, member: .init(workload: "web", namespace: 100), addresses: [ip("198.18.0.21"), ip("fd00::21")])
        XCTAssertEqual(changes, [ip("198.18.0.21"): "web", ip("fd00::21"): "web"])
        // A second container of the same workload in the same pod: nothing changes.
        XCTAssertEqual(book.update(cgroup: 2, member: .init(workload: "web", namespace: 100), addresses: [ip("198.18.0.21"), ip("fd00::21")]), [:])
        // Another workload in that namespace (a sidecar): the address names neither.
        changes = book.update(cgroup: 3, member: .init(workload: "proxy", namespace: 100), addresses: [ip("198.18.0.21"), ip("fd00::21")])
        XCTAssertEqual(changes, [ip("198.18.0.21"): String?.none, ip("fd00::21"): String?.none])
        XCTAssertNil(book.owners[ip("198.18.0.21")])
        XCTAssertEqual(book.remove(cgroup: 3), [ip("198.18.0.21"): "web", ip("fd00::21"): "web"])
        // The replacement: the old container goes, a new one at a new address comes.
        _ = book.remove(cgroup: 1)
        XCTAssertEqual(book.remove(cgroup: 2), [ip("198.18.0.21"): String?.none, ip("fd00::21"): String?.none])
        XCTAssertEqual(book.update(cgroup: 4, member: .init(workload: "web", namespace: 101), addresses: [ip("198.18.0.22")]),
                       [ip("198.18.0.22"): "web"])
        XCTAssertEqual(book.owners, [ip("198.18.0.22"): "web"])
    }

    /// The containers of one pod (an app and its sidecar) share its address:
    /// it names the pod's owner, the same on every replica; containers of no
    /// one pod in one namespace name nothing.
    func testAPodsContainersTogetherNameThePodsOwner() {
        var book = AddressBook()
        _ = book.update(cgroup: 1, member: .init(workload: "shop/web/app", namespace: 100, podOwner: "shop/web"), addresses: [ip("198.18.0.21")])
        XCTAssertEqual(book.owners[ip("198.18.0.21")], "shop/web/app", "one container: its own workload")
        let changes = book.update(cgroup: 2, member: .init(workload: "shop/web/istio-proxy", namespace: 100, podOwner: "shop/web"),
                                  addresses: [ip("198.18.0.21")])
        XCTAssertEqual(changes, [ip("198.18.0.21"): "shop/web"])
        // A container of another pod owner, or of no pod, in that namespace: nothing.
        _ = book.update(cgroup: 3, member: .init(workload: "debug", namespace: 100), addresses: [ip("198.18.0.21")])
        XCTAssertNil(book.owners[ip("198.18.0.21")])
        _ = book.remove(cgroup: 3)
        XCTAssertEqual(book.owners[ip("198.18.0.21")], "shop/web")
        // The same address in a second namespace (even of the same owner): nothing.
        _ = book.update(cgroup: 4, member: .init(workload: "shop/web/app", namespace: 101, podOwner: "shop/web"), addresses: [ip("198.18.0.21")])
        XCTAssertNil(book.owners[ip("198.18.0.21")])
        XCTAssertEqual(WorkloadNaming.podOwner(workload: "shop/web/app", pod: PodInfo(namespace: "shop", name: "web-1", uid: "u", container: "app")), "shop/web")
        XCTAssertNil(WorkloadNaming.podOwner(workload: "other", pod: PodInfo(namespace: "shop", name: "web-1", uid: "u", container: "app")))
    }

    func testTwoNamespacesWithOneAddressNameNoOneAndLoopbackIsNeverAWorkloads() {
        var book = AddressBook()
        _ = book.update(cgroup: 1, member: .init(workload: "a", namespace: 1), addresses: [ip("198.18.0.5"), ip("127.0.0.1"), ip("::1")])
        _ = book.update(cgroup: 2, member: .init(workload: "b", namespace: 2), addresses: [ip("198.18.0.5"), ip("198.18.0.6")])
        XCTAssertEqual(book.owners, [ip("198.18.0.6"): "b"])
        // A full scan replaces everything, and drops namespaces no cgroup is in.
        let changes = book.replaceAll(members: [2: .init(workload: "b", namespace: 2)],
                                      namespaces: [2: [ip("198.18.0.6")], 9: [ip("198.18.0.9")]])
        XCTAssertEqual(changes, [:])
        XCTAssertEqual(book.namespaces.keys.sorted(), [2])
    }

    func testFibTrieGivesTheNamespacesOwnIPv4Addresses() {
        let text = """
            Main:
              +-- 0.0.0.0/0 3 0 5
                 |-- 0.0.0.0
                    /0 universe UNICAST
                 +-- 127.0.0.0/8 2 0 2
                    +-- 127.0.0.0/31 1 0 0
                       |-- 127.0.0.0
                          /8 host LOCAL
                       |-- 127.0.0.1
                          /32 host LOCAL
                    |-- 127.255.255.255
                       /32 link BROADCAST
                 +-- 198.18.0.0/24 2 0 2
                    +-- 198.18.0.0/27 2 0 2
                       |-- 198.18.0.0
                          /24 link UNICAST
                       |-- 198.18.0.21
                          /32 host LOCAL
                    |-- 198.18.0.255
                       /32 link BROADCAST
            Local:
              +-- 0.0.0.0/0 3 0 5
                 +-- 198.18.0.0/24 2 0 2
                       |-- 198.18.0.21
                          /32 host LOCAL
                       |-- 198.18.1.7
                          /32 host LOCAL
            """
        XCTAssertEqual(NamespaceAddresses.ipv4(fibTrie: text), [ip("198.18.0.21"), ip("198.18.1.7")])
        XCTAssertEqual(NamespaceAddresses.ipv4(fibTrie: "garbage\n|-- not-an-address\n   /32 host LOCAL\n"), [])
    }

    func testIfInet6LeavesOutLoopbackAndLinkLocal() {
        let text = """
            fd000000000000000000000000000002 04 40 00 82     eth0
            00000000000000000000000000000001 01 80 10 80       lo
            fe8000000000000000fc00fffe000001 04 40 20 80     eth0
            short 04 40 00 80 eth0
            """
        XCTAssertEqual(NamespaceAddresses.ipv6(ifInet6: text), [ip("fd00::2")])
    }

    // Found by reading the parser for the namespace-addresses fuzz target: 32
    // bytes with a 2-byte character are 31 Characters, and stepping two
    // Characters at a time ran past the end (a trap, not a skipped line).
    func testIfInet6NonASCIIAddressFieldIsSkipped() {
        let text = "é000000000000000000000000000002 04 40 00 82     eth0\nfd000000000000000000000000000002 04 40 00 82     eth0\n"
        XCTAssertEqual(NamespaceAddresses.ipv6(ifInet6: text), [ip("fd00::2")])
    }

    // Found by the namespace-addresses fuzz target: link-local was left out
    // by the scope column only, not by its fe80::/10 address as documented.
    func testIfInet6LinkLocalIsLeftOutByAddressToo() {
        XCTAssertEqual(NamespaceAddresses.ipv6(ifInet6: "fe800000000000000000000000000001 04 40 00 80 eth0\n"), [])
        XCTAssertEqual(NamespaceAddresses.ipv6(ifInet6: "febf0000000000000000000000000001 04 40 00 80 eth0\n"), [])
        XCTAssertEqual(NamespaceAddresses.ipv6(ifInet6: "fec00000000000000000000000000001 04 40 00 80 eth0\n"), [ip("fec0::1")])
    }

    func testThisProcessSeesItsOwnNamespace() {
        XCTAssertNotNil(NamespaceAddresses.ownNamespace)
        XCTAssertEqual(NamespaceAddresses.namespace(ofProcess: getpid()), NamespaceAddresses.ownNamespace)
        XCTAssertNil(NamespaceAddresses.namespace(ofProcess: -1))
    }
}
