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
