import Glibc

public struct FileError: Error, CustomStringConvertible {
    public let path: String
    public let errno: Int32
    public init(path: String, errno: Int32) {
        self.path = path
        self.errno = errno
    }

    public var description: String { "\(path): \(String(cString: strerror(errno)))" }
}

/// Reads a whole (small, often procfs) file. procfs files report size 0, so
/// read until EOF rather than trusting stat.
public func readFile(_ path: String) throws -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FileError(path: path, errno: errno) }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw FileError(path: path, errno: errno)
        }
        if n == 0 { break }
        out.append(contentsOf: buf[0..<n])
    }
    return String(decoding: out, as: UTF8.self)
}

/// One entry of a directory.
public struct DirectoryEntry: Sendable, Equatable {
    public var name: String
    public var isDirectory: Bool
}

/// The entries of `dir` ("." and ".." left out), or nil when it cannot be
/// opened. Names are decoded as UTF-8, repaired rather than dropped.
public func listDirectory(_ dir: String) -> [DirectoryEntry]? {
    guard let handle = opendir(dir) else { return nil }
    defer { closedir(handle) }
    var entries: [DirectoryEntry] = []
    while let entry = readdir(handle) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { cString(from: $0) }
        if name == "." || name == ".." { continue }
        entries.append(DirectoryEntry(name: name, isDirectory: entry.pointee.d_type == UInt8(DT_DIR)))
    }
    return entries
}

/// One cgroup directory found by `walkCgroups`.
public struct CgroupDirectoryEntry: Sendable, Equatable {
    /// The cgroup id: the inode of its directory.
    public var id: UInt64
    /// Absolute path.
    public var path: String
    /// Relative to the walk's root ("/" for the root itself).
    public var relativePath: String
}

/// `root` and every cgroup directory below it (a cgroup's children are the
/// subdirectories of its directory).
public func walkCgroups(_ root: String) -> [CgroupDirectoryEntry] {
    var result: [CgroupDirectoryEntry] = []
    var stack: [(path: String, relative: String)] = [(root, "/")]
    while let (dir, relative) = stack.popLast() {
        var st = stat()
        guard lstat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { continue }
        result.append(CgroupDirectoryEntry(id: UInt64(st.st_ino), path: dir, relativePath: relative))
        for e in listDirectory(dir) ?? [] where e.isDirectory {
            stack.append((dir + "/" + e.name, relative == "/" ? "/" + e.name : relative + "/" + e.name))
        }
    }
    return result
}
