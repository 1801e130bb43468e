import ConnGuardCore
import XCTest

final class AddressTests: XCTestCase {
    func testIPv4RoundTrip() throws {
        let a = try XCTUnwrap(IPAddress("10.1.2.3"))
        XCTAssertEqual(a.family, .ipv4)
        XCTAssertEqual(a.bytes, [10, 1, 2, 3])
        XCTAssertEqual(a.description, "10.1.2.3")
    }

    func testIPv6IsCompressed() throws {
        let a = try XCTUnwrap(IPAddress("fd00:0:0:0:0:0:0:1"))
        XCTAssertEqual(a.family, .ipv6)
        XCTAssertEqual(a.description, "fd00::1")
        XCTAssertEqual(IPAddress("::1")?.isLoopback, true)
    }

    func testMappedIPv6BecomesIPv4() throws {
        let mapped = try XCTUnwrap(IPAddress("::ffff:192.168.7.9"))
        XCTAssertEqual(mapped.family, .ipv4)
        XCTAssertEqual(mapped.description, "192.168.7.9")
        XCTAssertEqual(mapped, IPAddress("192.168.7.9"))
        // Only ::ffff:0:0/96 is mapped; the deprecated compatible form is not.
        XCTAssertEqual(IPAddress("::192.168.7.9")?.family, .ipv6)
    }

    func testGarbageIsRejected() {
        for text in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "fd00:::1", "localhost", "1.2.3.4 ", "::ffff:1.2.3.4%eth0"] {
            XCTAssertNil(IPAddress(text), text)
        }
    }

    func testCIDR() throws {
        let net = try XCTUnwrap(CIDR("10.0.0.0/8"))
        XCTAssertTrue(net.contains(IPAddress("10.255.1.2")!))
        XCTAssertFalse(net.contains(IPAddress("11.0.0.1")!))
        XCTAssertFalse(net.contains(IPAddress("fd00::1")!))
        XCTAssertEqual(CIDR("10.1.2.3/16")?.description, "10.1.0.0/16")
        XCTAssertEqual(CIDR("10.1.2.3")?.prefixLength, 32)
        let v6 = try XCTUnwrap(CIDR("fd00::/8"))
        XCTAssertTrue(v6.contains(IPAddress("fdff::1")!))
        XCTAssertFalse(v6.contains(IPAddress("fe80::1")!))
        XCTAssertTrue(CIDR("0.0.0.0/0")!.contains(IPAddress("8.8.8.8")!))
        for bad in ["10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/", "fd00::/129", "x/8", "10.0.0.0/8/8", "10.0.0.0/+8"] {
            XCTAssertNil(CIDR(bad), bad)
        }
    }
}
