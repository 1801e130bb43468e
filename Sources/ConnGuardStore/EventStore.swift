import ConnGuardCore
import Foundation
import GRDB
import GRDBSQLite
import Glibc

/// The agent's embedded database: one SQLite file in WAL mode (readers never
/// block the writer), holding recent connection events and long-lived
/// aggregates. Safe to use from any thread; writes are serialized.
public final class EventStore: Sendable {
    public static let defaultPath = "/var/lib/connguard/connguard.db"

    public struct Options: Sendable {
        /// Open an existing database for queries only (the CLI beside a
        /// running agent): no migrations, no writes, no file created.
        public var readOnly: Bool
        /// `.normal` (default) survives a crash or kill -9 of the process
        /// with every commit; a power loss may lose the last commits but never
        /// corrupts. `.full` syncs the WAL on every commit.
        public var synchronous: Synchronous
        /// How long to wait for another process's lock, in seconds.
        public var busyTimeout: Double
        /// Later layers' migrations (baselines, rules, modes, audit log),
        /// registered after the store's own.
        public var migrations: [Migration]

        public init(readOnly: Bool = false, synchronous: Synchronous = .normal, busyTimeout: Double = 5,
                    migrations: [Migration] = []) {
            self.readOnly = readOnly
            self.synchronous = synchronous
            self.busyTimeout = busyTimeout
            self.migrations = migrations
        }
    }

    public enum Synchronous: String, Sendable {
        case normal = "NORMAL"
        case full = "FULL"
    }

    /// One schema step of a later layer, e.g. Migration("policy-v1") { db in ... }.
    public struct Migration: Sendable {
        public let identifier: String
        public let migrate: @Sendable (Database) throws -> Void
        public init(_ identifier: String, migrate: @escaping @Sendable (Database) throws -> Void) {
            self.identifier = identifier
            self.migrate = migrate
        }
    }

    public let path: String
    /// The underlying pool, for later layers' own tables in the same file.
    public let database: DatabasePool
    let interner = Interner()

    /// Opens (creating if needed, unless read-only) the database at `path`.
    /// Missing parent directories are made with mode 0700, a new file 0600
    /// (SQLite gives its -wal and -shm files the same mode).
    public init(path: String = EventStore.defaultPath, options: Options = Options()) throws {
        guard !path.isEmpty else { throw StoreError.invalidPath(path) }
        self.path = path
        if options.readOnly {
            guard access(path, F_OK) == 0 else { throw StoreError.missing(path) }
        } else {
            try EventStore.createFile(path)
        }
        var config = Configuration()
        config.readonly = options.readOnly
        config.busyMode = .timeout(options.busyTimeout)
        config.label = "connguard-store"
        config.maximumReaderCount = 4
        let synchronous = options.synchronous.rawValue
        config.prepareDatabase { db in
            // Pages come from the OS page cache by mmap rather than a read()
            // each, and the writer keeps the hot index pages in its own cache.
            try db.execute(sql: "PRAGMA mmap_size = 268435456")
            if !db.configuration.readonly {
                try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
                try db.execute(sql: "PRAGMA cache_size = -32768")
                try db.execute(sql: "PRAGMA wal_autocheckpoint = 10000")
                try db.execute(sql: "PRAGMA journal_size_limit = 67108864")
            }
        }
        do {
            database = try DatabasePool(path: path, configuration: config)
        } catch {
            throw StoreError.cannotOpen(path, String(describing: error))
        }
        let migrator = EventStore.migrator(options.migrations)
        if options.readOnly {
            let ready = try database.read { db in try migrator.hasCompletedMigrations(db) || migrator.hasBeenSuperseded(db) }
            guard ready else { throw StoreError.notInitialized(path) }
        } else {
            try migrator.migrate(database)
        }
    }

    public static func open(path: String = EventStore.defaultPath, options: Options = Options()) throws -> EventStore {
        try EventStore(path: path, options: options)
    }

    /// The store's migrations, then `extra`.
    public static func migrator(_ extra: [Migration] = []) -> DatabaseMigrator {
        var migrator = DatabaseMigrator()
        StoreSchema.registerMigrations(in: &migrator)
        for m in extra { migrator.registerMigration(m.identifier, migrate: m.migrate) }
        return migrator
    }

    /// Closes the connections (the WAL is checkpointed into the main file).
    /// Any later call throws.
    public func close() throws {
        try database.close()
    }

    /// Wall-clock nanoseconds since the Unix epoch.
    public static func now() -> Int64 { BootClock.now(CLOCK_REALTIME) }

    // MARK: - Stats

    public struct Stats: Sendable, Equatable {
        public var events: Int
        public var aggregates: Int
        public var workloads: Int
        public var identities: Int
        /// Wall-clock nanoseconds of the oldest and newest stored event.
        public var oldestEvent: Int64?
        public var newestEvent: Int64?
        /// The largest id given so far (what `afterID` follows).
        public var lastEventID: Int64
        /// Sizes of the main file, its -wal and its -shm.
        public var databaseBytes: Int64
        public var walBytes: Int64
        public var shmBytes: Int64
        public var totalBytes: Int64 { databaseBytes + walBytes + shmBytes }
    }

    public func stats() throws -> Stats {
        var s = try database.read { db in
            Stats(events: try Int.fetchOne(db, sql: "SELECT count(*) FROM event") ?? 0,
                  aggregates: try Int.fetchOne(db, sql: "SELECT count(*) FROM connection_aggregate") ?? 0,
                  workloads: try Int.fetchOne(db, sql: "SELECT count(*) FROM workload") ?? 0,
                  identities: try Int.fetchOne(db, sql: "SELECT count(*) FROM identity") ?? 0,
                  oldestEvent: try Int64.fetchOne(db, sql: "SELECT min(time) FROM event"),
                  newestEvent: try Int64.fetchOne(db, sql: "SELECT max(time) FROM event"),
                  lastEventID: try Int64.fetchOne(db, sql: "SELECT seq FROM sqlite_sequence WHERE name = 'event'") ?? 0,
                  databaseBytes: 0, walBytes: 0, shmBytes: 0)
        }
        s.databaseBytes = EventStore.fileSize(path)
        s.walBytes = EventStore.fileSize(path + "-wal")
        s.shmBytes = EventStore.fileSize(path + "-shm")
        return s
    }

    private static func fileSize(_ path: String) -> Int64 {
        var st = stat()
        return stat(path, &st) == 0 ? Int64(st.st_size) : 0
    }

    // MARK: - Files

    private static func createFile(_ path: String) throws {
        var st = stat()
        if stat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFREG else { throw StoreError.invalidPath(path) }
            return
        }
        var directory = ""
        let components = path.split(separator: "/", omittingEmptySubsequences: true).dropLast()
        if path.hasPrefix("/") { directory = "" } else { directory = "." }
        for component in components {
            directory += "/" + component
            if mkdir(directory, 0o700) != 0 && errno != EEXIST {
                throw StoreError.cannotCreate(directory, errno)
            }
        }
        let fd = Glibc.open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600)
        if fd < 0 {
            if errno == EEXIST { return }
            throw StoreError.cannotCreate(path, errno)
        }
        Glibc.close(fd)
    }
}

extension StoreError {
    /// Whether `error` is SQLite saying the disk (or the file system's
    /// quota) is full: SQLITE_FULL, which it reports for ENOSPC and EDQUOT.
    public static func isDiskFull(_ error: Error) -> Bool {
        if let e = error as? DatabaseError { return e.resultCode.primaryResultCode == .SQLITE_FULL }
        if case let .cannotCreate(_, e) = error as? StoreError { return e == ENOSPC || e == EDQUOT }
        return false
    }

    /// `error` as one line for a log, saying so plainly when the disk is full.
    public static func describe(_ error: Error) -> String {
        isDiskFull(error)
            ? "the disk holding the database is full (ENOSPC, SQLITE_FULL): free space on it; events are counted as lost meanwhile (\(error))"
            : String(describing: error)
    }
}

public enum StoreError: Error, Equatable, CustomStringConvertible {
    case invalidPath(String)
    case cannotCreate(String, Int32)
    case cannotOpen(String, String)
    case missing(String)
    case notInitialized(String)
    case invalidRetention(String)

    public var description: String {
        switch self {
        case let .invalidPath(p): return "\(p): not a usable database path"
        case let .cannotCreate(p, e): return "\(p): cannot create: \(String(cString: strerror(e)))"
        case let .cannotOpen(p, why): return "\(p): cannot open the database: \(why)"
        case let .missing(p): return "\(p): no database there (is the agent running? use --db to point elsewhere)"
        case let .notInitialized(p): return "\(p): not a ConnGuard database, or one no agent of this version has set up yet"
        case let .invalidRetention(why): return "invalid retention: \(why)"
        }
    }
}
