import Glibc

/// One harness: the decoder alone (what the corpus timing measures) and the decoder with its
/// invariants (what the fuzzer runs). A failed invariant aborts, which libFuzzer reports as a
/// crash and saves as `crash-<sha1>` with the input.
public struct Harness: Sendable {
    public let name: String
    /// Decodes `bytes` as the daemon would, and nothing more.
    public let decode: @Sendable ([UInt8]) -> Void
    /// Decodes `bytes` and checks what must hold of the answer (round trips, agreement of two
    /// decoders of one format, bounds).
    public let check: @Sendable ([UInt8]) -> Void
    /// Valid inputs made by the project's own encoders, the start of the corpus
    /// (CLAWPEN_FUZZ_WRITE_SEEDS); the first is the harness's typical input.
    public let seeds: @Sendable () -> [[UInt8]]
    /// How many times `bytes` makes the decoder pay its fixed cost: 1 for a decoder called once
    /// per input; the frame splitters' frames (each is a call of the handler behind). The corpus
    /// timing charges a unit at least that many typical calls' worth of bytes (CorpusTiming).
    public let calls: @Sendable ([UInt8]) -> Int

    public init(
        name: String, seeds: @escaping @Sendable () -> [[UInt8]], decode: @escaping @Sendable ([UInt8]) -> Void,
        check: @escaping @Sendable ([UInt8]) -> Void, calls: @escaping @Sendable ([UInt8]) -> Int = { _ in 1 }
    ) {
        self.name = name
        self.seeds = seeds
        self.decode = decode
        self.check = check
        self.calls = calls
    }

    /// The body of LLVMFuzzerTestOneInput.
    public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
        let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
        check(bytes)
        return 0
    }

    /// The body of LLVMFuzzerInitialize: with CLAWPEN_FUZZ_TIME=<corpus dir> and
    /// CLAWPEN_FUZZ_TYPICAL=<file>, times every unit instead of fuzzing (CorpusTiming). With CLAWPEN_FUZZ_WRITE_SEEDS=<dir>, writes the seeds there
    /// (each checked first).
    public func initialize() {
        if let dir = getenv("CLAWPEN_FUZZ_WRITE_SEEDS").map({ String(cString: $0) }) {
            for (i, seed) in seeds().enumerated() {
                check(seed)
                let n = String(i)
                let path = dir + "/seed-" + String(repeating: "0", count: max(0, 3 - n.count)) + n
                guard let f = fopen(path, "wb") else { exit(2) }
                _ = seed.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
                fclose(f)
            }
            exit(0)
        }
        guard let dir = getenv("CLAWPEN_FUZZ_TIME").map({ String(cString: $0) }) else { return }
        let typical = getenv("CLAWPEN_FUZZ_TYPICAL").map { String(cString: $0) }
        exit(CorpusTiming.run(self, directory: dir, typical: typical))
    }
}

/// Aborts with `what` when `condition` is false: a broken invariant is a bug like a crash.
@inline(never)
public func require(_ condition: Bool, _ what: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    guard !condition else { return }
    printError("invariant broken at \(file):\(line): \(what())")
    abort()
}

/// Keeps a decoder's answer alive, so that the timing measures the decode and not nothing.
@inline(never)
public func blackHole<T>(_ value: T) {
    withExtendedLifetime(value) {}
}

/// A short printable form of bytes, for invariant messages.
public func shown(_ bytes: [UInt8], limit: Int = 120) -> String {
    var s = ""
    for b in bytes.prefix(limit) {
        if b >= 0x20 && b < 0x7F && b != UInt8(ascii: "\\") {
            s.unicodeScalars.append(Unicode.Scalar(b))
        } else {
            let h = String(b, radix: 16)
            s += "\\x" + (h.count == 1 ? "0" + h : h)
        }
    }
    return bytes.count > limit ? s + "... (\(bytes.count) bytes)" : s
}

/// A small deterministic generator for what a harness derives from its input's first bytes
/// (chunk boundaries): the same input always takes the same path.
public struct SplitMix: Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A line on standard error (libFuzzer's log).
public func printError(_ text: String) {
    var bytes = Array(text.utf8)
    bytes.append(0x0A)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}
