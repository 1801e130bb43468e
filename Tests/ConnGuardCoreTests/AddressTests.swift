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

    func testMaskingAtEveryBoundary() throws {
        // Prefixes that cut inside a byte, on a byte, and across the two
        // 64-bit halves of an IPv6 address.
        XCTAssertEqual(CIDR("10.255.255.255/9")?.description, "10.128.0.0/9")
        XCTAssertEqual(CIDR("255.255.255.255/31")?.description, "255.255.255.254/31")
        XCTAssertEqual(CIDR("1.2.3.4/0")?.description, "0.0.0.0/0")
        XCTAssertEqual(CIDR("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff/63")?.description, "2001:db8:ffff:fffe::/63")
        XCTAssertEqual(CIDR("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff/65")?.description, "2001:db8:ffff:ffff:8000::/65")
        XCTAssertEqual(CIDR("2001:db8::ffff/128")?.description, "2001:db8::ffff/128")
        XCTAssertEqual(CIDR("ffff::1/0")?.description, "::/0")
        // A masked IPv6 block stays IPv6 even where the masking leaves bits
        // that look like a mapped IPv4 address (::ffff:0:0 inside ::/80).
        XCTAssertEqual(CIDR("::ffff:ffff:1.2.3.4/80")?.network.family, .ipv6)
        let v6 = try XCTUnwrap(CIDR("2001:db8::/65"))
        XCTAssertTrue(v6.contains(IPAddress("2001:db8::7fff:ffff:ffff:ffff")!))
        XCTAssertFalse(v6.contains(IPAddress("2001:db8::8000:0:0:0")!))
    }

    func testOrderIsByFamilyThenBytes() throws {
        let sorted = ["fe80::1", "10.0.0.2", "::1", "9.255.255.255", "10.0.0.10", "2001:db8::"].compactMap(IPAddress.init).sorted()
        XCTAssertEqual(sorted.map(\.description), ["9.255.255.255", "10.0.0.2", "10.0.0.10", "::1", "2001:db8::", "fe80::1"])
    }

    func testBytesOfBothFamilies() throws {
        let v6 = try XCTUnwrap(IPAddress("2001:db8::102:304"))
        XCTAssertEqual(v6.bytes, [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        XCTAssertEqual(IPAddress(ipv6: v6.bytes), v6)
        XCTAssertEqual(IPAddress(ipv4: [192, 0, 2, 1]).bytes, [192, 0, 2, 1])
        XCTAssertEqual(IPAddress(ipv4: [192, 0, 2, 1])[byte: 3], 1)
        XCTAssertTrue(IPAddress("0.0.0.0")!.isUnspecified)
        XCTAssertTrue(IPAddress("::")!.isUnspecified)
        XCTAssertFalse(IPAddress("::1")!.isUnspecified)
        XCTAssertTrue(IPAddress("127.9.9.9")!.isLoopback)
        XCTAssertFalse(IPAddress("128.0.0.1")!.isLoopback)
    }

    // Found by the address fuzz target: inet_pton stopped at the NUL.
    func testTextAfterANulIsNotIgnored() {
        XCTAssertNil(IPAddress("10.0.0.1\0junk"))
        XCTAssertNil(IPAddress("::\0"))
        XCTAssertNil(CIDR("10.0.0.0\0/8"))
        XCTAssertEqual(IPAddress("10.0.0.1")?.description, "10.0.0.1")
    }
}
