import ClawpenProtocol
import ClawpenWire
import Foundation
@testable import ClawpenSupervisor
import XCTest

/// The runtime's frames: the binary worker messages round-trip and refuse what they must, the
/// JSON requests parse with messages that name the rule.
final class RuntimeWireTests: XCTestCase {
    func testWorkerMessagesRoundTrip() throws {
        let run = SupervisorToWorker.run(
            RunRequest(
                jobID: "j", argv: ["sh"], env: [], cwd: "/home", stdin: [1], timeoutMs: 5, outputCapBytes: 9,
                options: RunOptions(stream: true, stdinOpen: true, tty: true, rows: 4096, cols: 1)))
        XCTAssertEqual(try SupervisorToWorker.decode(run.encoded()), run)
        for c in [
            RuntimeCommand.watch(jobID: "j", replayToken: 7), .unwatch(jobID: "j"), .ack(jobID: "j", bytes: 65536),
            .input(jobID: "j", data: [0, 255], eof: true), .resize(jobID: "j", rows: 50, cols: 132), .signal(jobID: "j", signal: 15),
        ] {
            XCTAssertEqual(try SupervisorToWorker.decode(SupervisorToWorker.runtime(c).encoded()), .runtime(c))
        }
        for e in [
            RuntimeEvent.output(OutputChunk(jobID: "j", stream: .stderr, seq: 3, offset: 10, data: [1, 2])),
            .output(OutputChunk(jobID: "j", stream: .stdout, seq: nil, offset: 0, replayToken: 2, data: [])),
            .replayed(jobID: "j", replayToken: 2), .inputTaken(jobID: "j", bytes: 4),
        ] {
            XCTAssertEqual(try WorkerToSupervisor.decode(WorkerToSupervisor.runtime(e).encoded(), outputCap: 1), .runtime(e))
        }
    }

    func testAWorkerCannotSendAnOversizedChunkOrAnUnknownStream() {
        let big = WorkerToSupervisor.runtime(
            .output(OutputChunk(jobID: "j", stream: .stdout, seq: 0, offset: 0, data: [UInt8](repeating: 0, count: OutputChunk.maxBytes + 1))))
        XCTAssertThrowsError(try WorkerToSupervisor.decode(big.encoded(), outputCap: 1 << 20))
        var bytes = WorkerToSupervisor.runtime(.output(OutputChunk(jobID: "j", stream: .stdout, seq: 0, offset: 0, data: []))).encoded()
        bytes[6] = 9 // the stream byte after the tag and the 5-byte id
        XCTAssertThrowsError(try WorkerToSupervisor.decode(bytes, outputCap: 1))
    }

    func parse(_ json: String) -> Result<Request, ProtocolError> { RequestCodec.decode(Array(json.utf8)).request }

    func testRequestsParse() {
        XCTAssertEqual(
            try parse(#"{"type":"job.input","job_id":"x","data_b64":"aGk=","eof":true}"#).get(), .runtime(.input(jobID: "x", data: Array("hi".utf8), eof: true))
        )
        XCTAssertEqual(
            try parse(#"{"type":"job.signal","job_id":"x","signal":"sigterm"}"#).get(),
            .runtime(.signal(jobID: "x", signal: JobSignal(number: 15, name: "TERM"))))
        XCTAssertEqual(
            try parse(#"{"type":"job.signal","job_id":"x","signal":9}"#).get(), .runtime(.signal(jobID: "x", signal: JobSignal(number: 9, name: "KILL"))))
        XCTAssertEqual(try parse(#"{"type":"job.list","state":"running","limit":5}"#).get(), .runtime(.list(tenant: nil, state: .running, limit: 5)))
        guard case .submit(let s) = try? parse(#"{"type":"submit","tenant":"a","argv":["sh"],"stream":true,"tty":true,"rows":50,"cols":132}"#).get() else {
            return XCTFail("submit")
        }
        XCTAssertEqual(s.options, RunOptions(stream: true, tty: true, rows: 50, cols: 132))
    }

    func testRefusalsNameTheRule() {
        for (json, words) in [
            (#"{"type":"job.signal","job_id":"x","signal":"SEGV"}"#, "not a signal a job may be sent"),
            (#"{"type":"job.signal","job_id":"x","signal":64}"#, "not a signal"),
            (#"{"type":"job.resize","job_id":"x","rows":0,"cols":5}"#, "from 1 to 4096"),
            (#"{"type":"job.input","job_id":"x","data_b64":"!!"}"#, "not valid base64"),
            (#"{"type":"job.list","state":"sleeping"}"#, "not a job state"),
            (#"{"type":"job.list","limit":0}"#, "from 1 to 10000"),
            (#"{"type":"submit","tenant":"a","argv":["sh"],"rows":5}"#, "need \"tty\""),
            (#"{"type":"job.detach","job_id":"x"}"#, "attach_id"),
        ] {
            guard case .failure(let e) = parse(json) else { XCTFail("accepted \(json)"); continue }
            XCTAssertEqual(e.code, .invalidRequest)
            XCTAssertTrue(e.message.contains(words), "\(json): \(e.message)")
        }
    }
}

/// The supervisor's own base64 and output frames agree with Foundation's and with the JSON
/// builder, for every length's padding.
final class OutputFrameTests: XCTestCase {
    func testBase64MatchesFoundation() {
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 2, 3, 4, 5, 63, 64, 65, 65536] {
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var out: [UInt8] = []
            Base64.encode(bytes[...], appendingTo: &out)
            XCTAssertEqual(String(decoding: out, as: UTF8.self), Data(bytes).base64EncodedString(), "\(n) bytes")
        }
    }

    func testOutputFrameIsTheJSONObject() throws {
        let frame = Supervisor.outputFrame(requestID: .string("r\"1"), jobID: "j-1", stream: "stderr", seq: 7, offset: 9, data: [0, 255, 10][...])
        let v = try JSONValue.parse(frame)
        XCTAssertEqual(v["type"], .string("output"))
        XCTAssertEqual(v["id"], .string("r\"1"))
        XCTAssertEqual(v["job_id"], .string("j-1"))
        XCTAssertEqual(v["stream"], .string("stderr"))
        XCTAssertEqual(v["seq"], .int(7))
        XCTAssertEqual(v["offset"], .int(9))
        XCTAssertEqual(v["data_b64"], .string(Data([0, 255, 10]).base64EncodedString()))
        XCTAssertNil(v["replay"])
        let replay = try JSONValue.parse(Supervisor.outputFrame(requestID: .int(3), jobID: "j", stream: "stdout", seq: nil, offset: 0, data: [][...]))
        XCTAssertEqual(replay["seq"], .null)
        XCTAssertEqual(replay["replay"], .bool(true))
    }
}
