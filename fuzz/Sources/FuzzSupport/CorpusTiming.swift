import Glibc

/// "No input slower per byte than 10x a typical frame": after a long run, every unit of the
/// corpus (which libFuzzer grew to cover every path it found, the slow ones included) is decoded
/// again and timed, and its cost per byte is compared with that of a typical valid input of the
/// harness (fuzz/typical/<harness>).
///
/// A unit's cost is its time divided by max(its size, the typical input's size): a call has a
/// fixed cost (a few allocations), and a 3-byte unit that takes as long as the typical 300-byte
/// frame is not 100 times slower per byte. A unit longer than the typical one is charged per
/// byte of its own: that is where a cost that grows faster than the input would show.
///
/// A decoder that pays its fixed cost more than once per input (`Harness.calls`: the frame
/// splitters, once per frame) is charged max(its size, its calls x the typical input's bytes per
/// call): a stream of 1,000 empty frames makes 1,000 calls of the handler, each as dear as a
/// typical frame's, and is not 17 times slower per byte than a stream of typical 68-byte frames.
/// The ratio without that allowance is printed too (`raw_worst_ratio`): what it adds is a cost
/// per call that does not grow, while a cost that grows faster than the bytes or the calls
/// still shows in `worst_ratio`.
enum CorpusTiming {
    struct Unit {
        let name: String
        let bytes: [UInt8]
    }

    static func run(_ harness: Harness, directory: String, typical: String?) -> Int32 {
        guard var units = readDirectory(directory) else {
            printError("\(harness.name): cannot read the corpus \(directory)")
            return 2
        }
        units.sort { $0.name < $1.name }
        guard let typicalPath = typical, let typicalBytes = readFile(typicalPath), !typicalBytes.isEmpty else {
            printError("\(harness.name): no typical input (CLAWPEN_FUZZ_TYPICAL)")
            return 2
        }
        let typicalNs = nanoseconds(harness, typicalBytes)
        let typicalPerByte = typicalNs / Double(typicalBytes.count)
        let bytesPerCall = Double(typicalBytes.count) / Double(max(1, harness.calls(typicalBytes)))
        var worst = (ratio: 0.0, name: "", size: 0, ns: 0.0)
        var rawWorst = (ratio: 0.0, name: "")
        // CLAWPEN_FUZZ_TIME_EACH: a line per unit as well.
        let each = getenv("CLAWPEN_FUZZ_TIME_EACH") != nil
        for unit in units {
            let ns = nanoseconds(harness, unit.bytes)
            let calls = max(1, harness.calls(unit.bytes))
            let charged = max(Double(unit.bytes.count), Double(calls) * bytesPerCall)
            let ratio = ns / charged / typicalPerByte
            let raw = ns / Double(max(unit.bytes.count, typicalBytes.count)) / typicalPerByte
            if each { print("unit \(unit.name) bytes=\(unit.bytes.count) calls=\(calls) ns=\(fixed(ns)) ratio=\(fixed(ratio)) raw_ratio=\(fixed(raw))") }
            if ratio > worst.ratio { worst = (ratio, unit.name, unit.bytes.count, ns) }
            if raw > rawWorst.ratio { rawWorst = (raw, unit.name) }
        }
        // One line scripts/fuzz reads; the ratio is what the promise bounds.
        print(
            "timing \(harness.name): units=\(units.count) typical_bytes=\(typicalBytes.count) typical_ns_per_byte=\(fixed(typicalPerByte))"
                + " worst_ratio=\(fixed(worst.ratio)) worst_unit=\(worst.name) worst_bytes=\(worst.size) worst_us=\(fixed(worst.ns / 1000))"
                + (bytesPerCall < Double(typicalBytes.count) ? " raw_worst_ratio=\(fixed(rawWorst.ratio)) raw_worst_unit=\(rawWorst.name)" : ""))
        return 0
    }

    /// The fastest of 41 measurements, each as many calls as fill 20 µs (at least 1). On a
    /// shared machine the other processes only ever add time, and a short measurement often
    /// fits between two of them: the minimum is the decoder's own cost. The clock is the
    /// thread's CPU time, not the wall's: a nice-19 timing next to busy processes runs in slices
    /// of a few milliseconds tens of milliseconds apart, and a unit whose one call is longer
    /// than a slice would otherwise never be measured without a wait in it.
    static func nanoseconds(_ harness: Harness, _ bytes: [UInt8]) -> Double {
        var reps = 1
        while measure(harness, bytes, reps) * Double(reps) < 20_000 && reps < 1 << 16 { reps *= 2 }
        var best = Double.infinity
        for _ in 0..<41 { best = min(best, measure(harness, bytes, reps)) }
        return best
    }

    /// Nanoseconds per call, over `reps` calls.
    static func measure(_ harness: Harness, _ bytes: [UInt8], _ reps: Int) -> Double {
        var a = timespec(), b = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a)
        for _ in 0..<reps { harness.decode(bytes) }
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b)
        let ns = Double(b.tv_sec - a.tv_sec) * 1e9 + Double(b.tv_nsec - a.tv_nsec)
        return ns / Double(reps)
    }

    static func fixed(_ d: Double) -> String {
        let scaled = (d * 100).rounded() / 100
        return "\(scaled)"
    }

    static func readDirectory(_ path: String) -> [Unit]? {
        guard let dir = opendir(path) else { return nil }
        defer { closedir(dir) }
        var out: [Unit] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard !name.hasPrefix(".") else { continue }
            if let bytes = readFile(path + "/" + name) { out.append(Unit(name: name, bytes: bytes)) }
        }
        return out
    }

    static func readFile(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, f) }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }
}
