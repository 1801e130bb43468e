import CLibBPF
import Glibc

/// Reads a BPF ring buffer map. poll() blocks until records arrive or the
/// timeout passes, then hands each record to the handler, in order, on the
/// calling thread. Not thread-safe: one thread polls.
public final class RingBufferReader {
    public typealias Handler = (UnsafeRawBufferPointer) -> Void

    private var ring: OpaquePointer?
    private let box: HandlerBox

    private final class HandlerBox {
        let handler: Handler
        init(_ h: @escaping Handler) { handler = h }
    }

    public init(map: BPFMap, handler: @escaping Handler) throws {
        box = HandlerBox(handler)
        let ctx = Unmanaged.passUnretained(box).toOpaque()
        errno = 0
        ring = try checkPointer(
            ring_buffer__new(map.fd, { ctx, data, size in
                let box = Unmanaged<HandlerBox>.fromOpaque(ctx!).takeUnretainedValue()
                box.handler(UnsafeRawBufferPointer(start: data, count: size))
                return 0
            }, ctx, nil),
            "open ring buffer \(map.name)")
    }

    deinit {
        if let r = ring { ring_buffer__free(r) }
    }

    /// Waits up to `timeoutMilliseconds` for records, then consumes all that
    /// are ready (also those submitted without a wake-up). Returns how many
    /// records were handled. EINTR counts as zero records.
    @discardableResult
    public func poll(timeoutMilliseconds: Int32) throws -> Int {
        let n = ring_buffer__poll(ring, timeoutMilliseconds)
        if n < 0 && n != -EINTR {
            throw BPFError("poll ring buffer", errno: -n)
        }
        // Records submitted with BPF_RB_NO_WAKEUP do not end the wait: take them now.
        let m = ring_buffer__consume(ring)
        if m < 0 && m != -EINTR {
            throw BPFError("consume ring buffer", errno: -m)
        }
        return Int(max(n, 0)) + Int(max(m, 0))
    }

    /// Consumes whatever is ready without waiting.
    @discardableResult
    public func drain() throws -> Int {
        let m = ring_buffer__consume(ring)
        if m < 0 && m != -EINTR { throw BPFError("consume ring buffer", errno: -m) }
        return Int(max(m, 0))
    }
}
