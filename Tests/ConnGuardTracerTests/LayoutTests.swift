import CConnGuard
import XCTest

/// The sizes connguard.h asserts in C, checked again as Swift imports them:
/// the decoder reads records with these layouts.
final class LayoutTests: XCTestCase {
    func testSharedStructSizes() {
        XCTAssertEqual(MemoryLayout<cg_connection_event>.size, 96)
        XCTAssertEqual(MemoryLayout<cg_cgroup_event>.size, 280)
        XCTAssertEqual(MemoryLayout<cg_listener_key>.size, 8)
        XCTAssertEqual(MemoryLayout<cg_listener>.size, 40)
        XCTAssertEqual(MemoryLayout<cg_connecting>.size, 32)
    }
}
