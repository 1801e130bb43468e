/// Where the cgroup v2 hierarchy is mounted. Read from /proc/self/mountinfo,
/// never assumed: it is /sys/fs/cgroup on most nodes, /sys/fs/cgroup/unified
/// on hybrid layouts.
public enum CgroupMount {
    public static func find(mountinfo: String) -> String? {
        for line in mountinfo.split(separator: "\n") {
            // "36 25 0:31 / /sys/fs/cgroup/unified rw,... shared:9 - cgroup2 cgroup2 rw"
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2 else { continue }
            let fsType = halves[1].split(separator: " ").first
            guard fsType == "cgroup2" else { continue }
            let fields = halves[0].split(separator: " ")
            guard fields.count >= 5, fields[3] == "/" else { continue }
            return unescapeMountPath(String(fields[4]))
        }
        return nil
    }

    public static func find() -> String? {
        guard let text = try? readFile("/proc/self/mountinfo") else { return nil }
        return find(mountinfo: text)
    }

    /// mountinfo writes space, tab, newline and backslash as \ooo octal.
    static func unescapeMountPath(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 4 <= b.count,
               let v = UInt8(String(decoding: b[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
