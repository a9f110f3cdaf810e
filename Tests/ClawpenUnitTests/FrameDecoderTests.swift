@testable import ClawpenSupervisor
import ClawpenWire
import Dispatch
import NIOCore
import NIOEmbedded
import XCTest

/// The supervisor's frame decoder in a channel of its own (no sockets): what it emits, what it
/// refuses and when.
final class FrameDecoderTests: XCTestCase {
    /// Collects what the decoder passes on: payloads and errors.
    final class Sink: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var payloads: [[UInt8]] = []
        var errors: [any Error] = []
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            payloads.append(Array(unwrapInboundIn(data).readableBytesView))
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { errors.append(error) }
    }

    private func channel(limit: Int, partialTimeout: TimeAmount? = nil, runs: Bool = false) throws -> (EmbeddedChannel, Sink) {
        let sink = Sink()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers(
            ByteToMessageHandler(FrameDecoder(maxFrameBytes: limit, partialTimeout: partialTimeout, runs: runs)), sink)
        return (channel, sink)
    }

    private func buffer(_ bytes: [UInt8]) -> ByteBuffer { ByteBufferAllocator().buffer(bytes: bytes) }

    func testFramesSplitAcrossReadsOfEverySize() throws {
        let payloads: [[UInt8]] = [Array("a".utf8), [], Array(repeating: 7, count: 70_000), Array("{\"x\":1}".utf8)]
        var stream: [UInt8] = []
        for p in payloads { Framing.append(payload: p, to: &stream) }
        for chunk in [3, 4, 5, 7, 1000, stream.count] {
            let (channel, sink) = try channel(limit: 1 << 20)
            var i = 0
            while i < stream.count {
                try channel.writeInbound(buffer(Array(stream[i..<min(i + chunk, stream.count)])))
                i += chunk
            }
            XCTAssertEqual(sink.payloads, payloads, "chunk size \(chunk)")
            XCTAssertTrue(sink.errors.isEmpty)
            _ = try channel.finish()
        }
    }

    /// Runs (client connections): each read's whole frames come as one message, headers
    /// included, and split back into the same payloads, whatever the read sizes.
    func testRunsCarryTheSameFramesAsSinglePayloads() throws {
        let payloads: [[UInt8]] = [Array("a".utf8), [], Array(repeating: 7, count: 70_000), Array("{\"x\":1}".utf8), [1, 2]]
        var stream: [UInt8] = []
        for p in payloads { Framing.append(payload: p, to: &stream) }
        for chunk in [3, 4, 5, 7, 1000, stream.count] {
            let (channel, sink) = try channel(limit: 1 << 20, runs: true)
            var i = 0
            while i < stream.count {
                try channel.writeInbound(buffer(Array(stream[i..<min(i + chunk, stream.count)])))
                i += chunk
            }
            var split: [[UInt8]] = []
            for bytes in sink.payloads {
                var run = FrameRun(ByteBufferAllocator().buffer(bytes: bytes))
                XCTAssertFalse(run.isEmpty, "no empty runs")
                while let next = run.next() { split.append(Array(next.readableBytesView)) }
                XCTAssertTrue(run.isEmpty, "a run holds whole frames only")
            }
            XCTAssertEqual(split, payloads, "chunk size \(chunk)")
            if chunk == stream.count { XCTAssertEqual(sink.payloads.count, 1, "one read, one run") }
            XCTAssertTrue(sink.errors.isEmpty)
            _ = try channel.finish()
        }
    }

    /// In a run, the frames before an oversized header are passed on, then the refusal.
    func testARunStopsAtAnOversizedHeader() throws {
        let (channel, sink) = try channel(limit: 100, runs: true)
        var stream: [UInt8] = []
        Framing.append(payload: Array("ok".utf8), to: &stream)
        stream += [0, 0, 0, 101]
        try? channel.writeInbound(buffer(stream))
        XCTAssertEqual(sink.payloads, [[0, 0, 0, 2] + Array("ok".utf8)])
        guard case .tooLarge? = sink.errors.first as? FrameDecoder.Failure else { return XCTFail("\(sink.errors)") }
        _ = try? channel.finish()
    }

    func testARunLeftIncompleteIsReportedAfterTheTimeout() throws {
        let (channel, sink) = try channel(limit: 1 << 20, partialTimeout: .seconds(30), runs: true)
        try channel.writeInbound(buffer([0, 0, 0, 1, 9, 0, 0, 0, 10, 1, 2, 3]))
        XCTAssertEqual(sink.payloads.count, 1)
        channel.embeddedEventLoop.advanceTime(by: .seconds(29))
        XCTAssertTrue(sink.errors.isEmpty, "not yet")
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        guard case .incomplete(let received, _)? = sink.errors.first as? FrameDecoder.Failure else { return XCTFail("\(sink.errors)") }
        XCTAssertEqual(received, 7)
        _ = try? channel.finish()
    }

    func testAnOversizedHeaderIsRefusedBeforeAnyPayload() throws {
        let (channel, sink) = try channel(limit: 100)
        // The header alone: no payload byte has come, and the refusal is already there.
        try channel.writeInbound(buffer([0, 0, 0, 101]))
        guard case .tooLarge(let e)? = sink.errors.first as? FrameDecoder.Failure else { return XCTFail("\(sink.errors)") }
        XCTAssertEqual(e, FrameTooLarge(announced: 101, limit: 100))
        XCTAssertEqual(sink.errors.count, 1)
        XCTAssertTrue(sink.payloads.isEmpty)
        _ = try? channel.finish()
    }

    func testAFrameLeftIncompleteIsReportedAfterTheTimeout() throws {
        let (channel, sink) = try channel(limit: 1 << 20, partialTimeout: .seconds(30))
        try channel.writeInbound(buffer([0, 0, 0, 10, 1, 2, 3]))
        channel.embeddedEventLoop.advanceTime(by: .seconds(29))
        XCTAssertTrue(sink.errors.isEmpty, "not yet")
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        guard case .incomplete(let received, _)? = sink.errors.first as? FrameDecoder.Failure else {
            return XCTFail("\(sink.errors)")
        }
        XCTAssertEqual(received, 7)
        _ = try? channel.finish()
    }

    func testTheTimeoutRestartsWithEveryCompleteFrame() throws {
        // A client streaming frames back to back always has a partial one buffered; it is making
        // progress, so it is never cut off.
        let (channel, sink) = try channel(limit: 1 << 20, partialTimeout: .seconds(30))
        try channel.writeInbound(buffer([0, 0, 0, 2, 0xAA]))
        for _ in 0..<9 {
            channel.embeddedEventLoop.advanceTime(by: .seconds(20))
            try channel.writeInbound(buffer([0xBB, 0, 0, 0, 2, 0xAA])) // the rest of one frame, half of the next
        }
        channel.embeddedEventLoop.advanceTime(by: .seconds(20))
        try channel.writeInbound(buffer([0xBB]))
        XCTAssertEqual(sink.payloads.count, 10)
        XCTAssertTrue(sink.errors.isEmpty, "\(sink.errors)")
        _ = try? channel.finish()
    }

    /// The decoder reads the header as a big-endian UInt32 (ByteBuffer.getInteger), the client and
    /// the worker through the generic Framing.payloadLength(header:): the two agree on every
    /// header, the top bit and the limit's edges included.
    func testTheHeaderIsReadAsTheSplitterReadsIt() throws {
        let limit = 1000
        for header: [UInt8] in [[0, 0, 3, 0xE8], [0, 0, 3, 0xE9], [0x80, 0, 0, 0], [0xFF, 0xFF, 0xFF, 0xFF], [0, 0, 0, 0], [1, 0, 0, 0]] {
            let (channel, sink) = try channel(limit: limit)
            let announced = Framing.readLength(header)
            try channel.writeInbound(buffer(header + Array(repeating: 7, count: min(announced, limit))))
            var splitter = FrameSplitter(maxFrameBytes: limit)
            splitter.append(header + Array(repeating: 7, count: min(announced, limit)))
            let expected = Result { () throws(FrameTooLarge) in try splitter.next() }
            switch expected {
            case .success(let frame):
                XCTAssertEqual(sink.payloads, [frame!], "header \(header)")
                XCTAssertTrue(sink.errors.isEmpty, "header \(header)")
            case .failure(let e):
                guard case .tooLarge(let got)? = sink.errors.first as? FrameDecoder.Failure else { return XCTFail("header \(header): \(sink.errors)") }
                XCTAssertEqual(got, e, "header \(header)")
                XCTAssertEqual(got.announced, announced)
                XCTAssertTrue(sink.payloads.isEmpty)
            }
            _ = try? channel.finish()
        }
    }

    /// A stream of empty frames costs the decoder a constant per frame (no cost that grows with
    /// what came before): 16 times the frames in one read take about 16 times as long, not 256.
    func testManyEmptyFramesCostLinearTime() throws {
        func seconds(_ frames: Int) throws -> Double {
            let (channel, sink) = try channel(limit: 1 << 20)
            let stream = buffer(Array(repeating: 0, count: 4 * frames))
            let start = DispatchTime.now().uptimeNanoseconds
            try channel.writeInbound(stream)
            let end = DispatchTime.now().uptimeNanoseconds
            XCTAssertEqual(sink.payloads.count, frames)
            _ = try channel.finish()
            return Double(end - start) / 1e9
        }
        _ = try seconds(500)
        let small = (0..<3).map { _ in try! seconds(2000) }.min()!
        let large = (0..<3).map { _ in try! seconds(32000) }.min()!
        XCTAssertLessThan(large / small, 16 * 4, "2,000 empty frames: \(small) s, 32,000: \(large) s")
    }

    /// The one timer outlives complete frames: when it fires for a frame that was completed,
    /// it waits for what is left of the timeout of the frame incomplete now, and reports that
    /// one only when its own timeout is over.
    func testTheTimerCountsFromTheFrameIncompleteNow() throws {
        let (channel, sink) = try channel(limit: 1 << 20, partialTimeout: .seconds(30))
        try channel.writeInbound(buffer([0, 0, 0, 2, 0xAA]))
        channel.embeddedEventLoop.advanceTime(by: .seconds(20))
        try channel.writeInbound(buffer([0xBB, 0, 0, 0, 3, 1])) // completes the first, starts a second
        channel.embeddedEventLoop.advanceTime(by: .seconds(11)) // the first frame's 30 s are over
        XCTAssertTrue(sink.errors.isEmpty, "the second frame has been incomplete for 11 s only: \(sink.errors)")
        channel.embeddedEventLoop.advanceTime(by: .seconds(18)) // 29 s
        XCTAssertTrue(sink.errors.isEmpty, "\(sink.errors)")
        channel.embeddedEventLoop.advanceTime(by: .seconds(2)) // 31 s
        guard case .incomplete(let received, _)? = sink.errors.first as? FrameDecoder.Failure else {
            return XCTFail("\(sink.errors)")
        }
        XCTAssertEqual(received, 5)
        XCTAssertEqual(sink.payloads, [[0xAA, 0xBB]])
        _ = try? channel.finish()
    }

    func testNoTimeoutWithoutAPartialFrame() throws {
        let (channel, sink) = try channel(limit: 1 << 20, partialTimeout: .seconds(1))
        try channel.writeInbound(buffer([0, 0, 0, 1, 9]))
        channel.embeddedEventLoop.advanceTime(by: .seconds(60))
        XCTAssertEqual(sink.payloads, [[9]])
        XCTAssertTrue(sink.errors.isEmpty)
        _ = try channel.finish()
    }
}
