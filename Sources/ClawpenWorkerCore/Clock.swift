import Glibc

/// Monotonic nanoseconds: job run times and deadlines must not jump with the wall clock.
@inline(__always)
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func errnoString(_ e: Int32) -> String { String(cString: strerror(e)) }
