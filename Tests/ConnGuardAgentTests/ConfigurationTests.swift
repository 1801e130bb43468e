@testable import ConnGuardAgent
import XCTest

/// The YAML file's settings over the embedded defaults.
final class ConfigurationTests: XCTestCase {
    func testDefaultsNeedNoFile() throws {
        let c = try AgentConfiguration.load(yaml: "")
        XCTAssertEqual(c, AgentConfiguration())
        XCTAssertEqual(c.individualEventsPerSecond, 2_000)
        XCTAssertEqual(c.validate(), [])
    }

    func testSettingsOverrideDefaults() throws {
        let c = try AgentConfiguration.load(yaml: """
            database: /tmp/c.db
            individual_events_per_second: 0
            event_retention: 2h
            ring_buffer_mib: 64
            """)
        XCTAssertEqual(c.databasePath, "/tmp/c.db")
        XCTAssertEqual(c.individualEventsPerSecond, 0)
        XCTAssertEqual(c.eventRetentionSeconds, 7200)
        XCTAssertEqual(c.ringBufferMiB, 64)
    }

    func testEveryProblemIsListedAndNothingIsHalfApplied() {
        XCTAssertThrowsError(try AgentConfiguration.load(yaml: """
            individual_events_per_second: -1
            ring_buffer_mib: 3
            databse: /tmp/x
            """)) { error in
            let text = String(describing: error)
            for word in ["individual_events_per_second", "ring_buffer_mib", "databse"] {
                XCTAssertTrue(text.contains(word), "\(word) missing from: \(text)")
            }
        }
        XCTAssertThrowsError(try AgentConfiguration.load(yaml: "- a list\n- not a mapping"))
        XCTAssertThrowsError(try AgentConfiguration.load(yaml: "individual_events_per_second: many"))
    }
}
