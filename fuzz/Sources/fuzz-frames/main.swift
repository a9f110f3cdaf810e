import ClawpenWire
import FuzzSupport
import NIOCore
import NIOEmbedded

// The frame splitters: FrameSplitter (the worker's poll loop, the blocking client) and the
// supervisor's NIO FrameDecoder (linked here from Sources/ClawpenSupervisor/Channels), fed the
// same byte stream in the same chunks, the decoder both ways (a payload per frame, as on worker
// sockets, and runs of whole frames split by FrameRun, as on client connections). They must agree
// frame for frame and refuse the same header, and what they return must be exactly the stream
// they were given, reframed.
//
// Input: byte 0 picks the frame limit (n * 8 bytes; 255: the daemon's 16 MiB), byte 1 seeds the
// chunk sizes (0: the stream in one read), the rest is the stream.

struct Split: Equatable {
    var frames: [[UInt8]] = []
    var refused: FrameTooLarge?
    var buffered = 0
    /// Frames and payload bytes seen; the corpus timing (which measures the decoders, not this
    /// harness's bookkeeping) counts frames instead of copying them into `frames`.
    var count = 0
    var bytes = 0
}

struct Input {
    let limit: Int
    let chunks: [ArraySlice<UInt8>]
    let stream: [UInt8]
    let timeout: Bool

    init(_ bytes: [UInt8]) {
        let b0 = bytes.first ?? 0, b1 = bytes.count > 1 ? bytes[1] : 0
        limit = b0 == 255 ? Framing.defaultMaxRequestBytes : Int(b0) * 8
        timeout = b1 & 1 == 1
        stream = Array(bytes.dropFirst(2))
        var chunks: [ArraySlice<UInt8>] = []
        if b1 == 0 {
            chunks = [stream[...]]
        } else {
            var rng = SplitMix(seed: UInt64(b1))
            var i = 0
            while i < stream.count {
                let n = min(stream.count - i, 1 + Int(rng.next() % 64))
                chunks.append(stream[i..<(i + n)])
                i += n
            }
        }
        self.chunks = chunks
    }
}

func viaSplitter(_ input: Input, keep: Bool = true) -> Split {
    var out = Split()
    var s = FrameSplitter(maxFrameBytes: input.limit)
    reading: for chunk in input.chunks {
        s.append(chunk)
        do {
            while true {
                // Both ways out of the splitter: a copy (next) and in place (withNext), which is
                // how the worker takes a file's chunk (and the timing, which does not keep it).
                if keep && out.count % 2 == 0 {
                    guard let f = try s.next() else { break }
                    out.frames.append(f)
                    out.bytes += f.count
                } else if keep {
                    guard let f = try s.withNext({ Array($0) }) else { break }
                    out.frames.append(f)
                    out.bytes += f.count
                } else {
                    guard let n = try s.withNext({ $0.count }) else { break }
                    out.bytes += n
                }
                out.count += 1
            }
        } catch {
            out.refused = error
            break reading
        }
    }
    out.buffered = s.bufferedByteCount
    return out
}

/// Where FrameDecoder's frames go: a pipeline of the handler whose context the decoder is called
/// with, then one that collects what it fires. One channel for the whole run (a channel per input
/// would cost 25 times the decode); the decoder itself is new per input.
final class Grab: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var context: ChannelHandlerContext?
    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
}

final class Collect: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var keep = true
    /// The decoder emits runs of whole frames (FrameRun), split here.
    var runs = false
    var frames: [[UInt8]] = []
    var count = 0
    var bytes = 0
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = Self.unwrapInboundIn(data)
        guard runs else { return take(&b) }
        var run = FrameRun(b)
        require(!run.isEmpty, "an empty run")
        while var next = run.next() { take(&next) }
        require(run.isEmpty, "a run that does not split into whole frames")
    }
    private func take(_ b: inout ByteBuffer) {
        count += 1
        bytes += b.readableBytes
        if keep { frames.append(b.readBytes(length: b.readableBytes) ?? []) }
    }
}

struct Pipeline {
    let channel: EmbeddedChannel
    let grab = Grab()
    let collect = Collect()

    init() {
        channel = EmbeddedChannel()
        try! channel.pipeline.syncOperations.addHandlers([grab, collect])
    }
}

nonisolated(unsafe) var pipeline: Pipeline?

/// What ByteToMessageHandler does with the decoder: each read appended to one buffer, decode
/// until it needs more, and at the end decodeLast.
func viaDecoder(_ input: Input, keep: Bool = true, runs: Bool = false) -> Split {
    if pipeline == nil { pipeline = Pipeline() }
    let p = pipeline!
    let context = p.grab.context!
    p.collect.frames.removeAll(keepingCapacity: true)
    p.collect.keep = keep
    p.collect.count = 0
    p.collect.bytes = 0
    p.collect.runs = runs
    let decoder = FrameDecoder(maxFrameBytes: input.limit, partialTimeout: input.timeout ? .seconds(30) : nil, runs: runs)
    var buffer = p.channel.allocator.buffer(capacity: 0)
    var out = Split()
    do {
        for chunk in input.chunks {
            buffer.writeBytes(chunk)
            while try decoder.decode(context: context, buffer: &buffer) == .continue {}
        }
        while try decoder.decodeLast(context: context, buffer: &buffer, seenEOF: true) == .continue {}
    } catch FrameDecoder.Failure.tooLarge(let e) {
        out.refused = e
    } catch {
        require(false, "FrameDecoder threw \(error), not tooLarge")
    }
    decoder.decoderRemoved(context: context)
    out.frames = p.collect.frames
    out.count = p.collect.count
    out.bytes = p.collect.bytes
    out.buffered = buffer.readableBytes
    return out
}

let harness = Harness(
    name: "frames",
    seeds: {
        let submit = Array(#"{"type":"submit","id":1,"tenant":"acme","argv":["sh","-c","echo hi"],"timeout_s":30}"#.utf8)
        let ping = Array(#"{"type":"ping","id":2}"#.utf8)
        var stream: [UInt8] = [255, 0]
        for p in [submit, ping, submit] { Framing.append(payload: p, to: &stream) }
        var chunked: [UInt8] = [255, 7]
        for p in [ping, [], submit] { Framing.append(payload: p, to: &chunked) }
        // A header over the limit after one good frame, and a frame cut short.
        var refused: [UInt8] = [4, 3]
        Framing.append(payload: ping, to: &refused)
        refused += [0, 0, 1, 0, 1, 2]
        var partial: [UInt8] = [255, 2]
        Framing.append(payload: submit, to: &partial)
        partial += [0, 0, 0, 40, 1, 2, 3]
        return [stream, chunked, refused, partial]
    },
    decode: { bytes in
        let input = Input(bytes)
        blackHole(viaSplitter(input, keep: false))
        blackHole(viaDecoder(input, keep: false))
        blackHole(viaDecoder(input, keep: false, runs: true))
    },
    check: { bytes in
        let input = Input(bytes)
        let a = viaSplitter(input), b = viaDecoder(input), c = viaDecoder(input, runs: true)
        // What the timing runs (the frames counted, not kept) splits the same way.
        let counted = viaDecoder(input, keep: false)
        require(counted.count == b.count && counted.bytes == b.bytes && counted.refused == b.refused, "counting the frames changed the split")
        require(
            a == b,
            "FrameSplitter and FrameDecoder disagree: \(a.frames.count) vs \(b.frames.count) frames, \(String(describing: a.refused)) vs \(String(describing: b.refused))"
        )
        require(
            b == c,
            "FrameDecoder's payloads and its runs disagree: \(b.frames.count) vs \(c.frames.count) frames, \(String(describing: b.refused)) vs \(String(describing: c.refused))"
        )
        // The frames are the stream, reframed, up to where the splitter stopped.
        var reframed: [UInt8] = []
        for f in a.frames {
            require(f.count <= input.limit, "a frame of \(f.count) bytes passed the limit \(input.limit)")
            Framing.append(payload: f, to: &reframed)
        }
        let s = input.stream
        require(reframed.count <= s.count && s[0..<reframed.count].elementsEqual(reframed), "the frames are not the stream")
        let rest = s[reframed.count...]
        if let refused = a.refused {
            // It stopped at a header that announces more than the limit, before its payload.
            require(rest.count >= 4, "refused with fewer than 4 bytes of header")
            require(refused.announced == Framing.readLength(rest) && refused.announced > input.limit, "refused a header that is within the limit")
        } else {
            // What is left is the start of one frame: less than a header, or less than it announces.
            require(a.buffered == rest.count, "the splitter holds \(a.buffered) bytes, \(rest.count) are left")
            if rest.count >= 4 {
                let n = Framing.readLength(rest)
                require(n <= input.limit && rest.count < 4 + n, "a complete frame was left unsplit")
            }
        }
    },
    // Each frame is a call of the handler behind the decoder (CorpusTiming).
    calls: { bytes in viaSplitter(Input(bytes), keep: false).count })

// libFuzzer's entry points (it supplies main).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { harness.testOneInput(data, size) }

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    harness.initialize()
    return 0
}
