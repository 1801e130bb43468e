import ConnGuardCore
import BPFKit
import Glibc

/// What the kill-switch removed.
public struct RemovalReport: Sendable, Equatable, CustomStringConvertible {
    /// Pinned links detached (paths).
    public var detachedLinks: [String] = []
    /// Pins removed (links and maps, paths).
    public var removedPins: [String] = []
    /// Enforcement links found attached with no pin (held by a running
    /// process, or under another pin root), detached by id.
    public var detachedUnpinnedLinks: [UInt32] = []

    public var isEmpty: Bool { removedPins.isEmpty && detachedUnpinnedLinks.isEmpty }

    public var description: String {
        if isEmpty { return "nothing of ConnGuard's enforcement was found" }
        var lines: [String] = []
        for p in detachedLinks { lines.append("detached \(p)") }
        for p in removedPins where !detachedLinks.contains(p) { lines.append("removed \(p)") }
        for id in detachedUnpinnedLinks { lines.append("detached link id \(id)") }
        return lines.joined(separator: "\n")
    }
}

extension Enforcer {
    /// The kill-switch: detaches every enforcement link pinned under
    /// `pinRoot` and removes every pin there, then the folder. With
    /// `sweepUnpinnedLinks`, also detaches every other enforcement link in the
    /// kernel (program name `cg_enf_*`), wherever it is attached and whoever
    /// holds it: afterwards no ConnGuard program decides any connection.
    /// Maps and programs are freed by the kernel once their last holder lets
    /// go. Safe to run at any time, also while an agent runs.
    public static func removeAll(pinRoot: String = defaultPinRoot, sweepUnpinnedLinks: Bool = true) throws -> RemovalReport {
        var report = RemovalReport()
        var firstError: Error?
        // Links first, so nothing is left deciding with half of its maps unpinned.
        let entries = pinTree(pinRoot)
        for path in entries.files where BPFSystem.pinnedKind(path) == .link {
            do {
                if try BPFSystem.detachPinnedLink(path) { report.detachedLinks.append(path) }
            } catch {
                firstError = firstError ?? error
            }
        }
        for path in entries.files {
            if unlink(path) == 0 { report.removedPins.append(path) } else if errno != ENOENT {
                firstError = firstError ?? EnforcerError.invalidArgument("cannot remove \(path): \(String(cString: strerror(errno)))")
            }
        }
        // A running agent holds its pin root (PinRootLock): keep that folder,
        // now empty, so a second agent is still refused.
        for dir in entries.directories.reversed() where !(dir == pinRoot && PinRootLock.isHeld(dir)) { rmdir(dir) }
        if sweepUnpinnedLinks {
            for link in BPFSystem.links() where link.attached && link.programName.hasPrefix(programPrefix) {
                do {
                    try BPFSystem.detachLink(id: link.id)
                    report.detachedUnpinnedLinks.append(link.id)
                } catch {
                    firstError = firstError ?? error
                }
            }
        }
        if let firstError { throw firstError }
        return report
    }

    /// Files and folders under `root` (root included in folders, first).
    static func pinTree(_ root: String) -> (files: [String], directories: [String]) {
        var files: [String] = []
        var dirs: [String] = []
        var stack = [root]
        while let dir = stack.popLast() {
            guard let entries = listDirectory(dir) else { continue }
            dirs.append(dir)
            for e in entries {
                let path = dir + "/" + e.name
                if e.isDirectory { stack.append(path) } else { files.append(path) }
            }
        }
        return (files, dirs)
    }
}
