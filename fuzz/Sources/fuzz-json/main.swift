@testable import ClawpenProtocol
import FuzzSupport

// The JSON parser every request, reply and egress report goes through, with the request limits
// (depth 32, 65,536 values: what the supervisor applies to a client's frame) and the default
// ones (replies, the proxy's reports). A document either limit accepts serializes to text that
// parses back to the same value, and serializing that again gives the same text.

/// Same value in the same key order (JSONValue's == ignores the order, and costs a scan of one
/// object per key of the other). Numbers compare by value: the serializer writes 1.0 as 1.
func identical(_ a: JSONValue, _ b: JSONValue) -> Bool {
    switch (a, b) {
    case let (.array(x), .array(y)): return x.count == y.count && zip(x, y).allSatisfy { identical($0, $1) }
    case let (.object(x), .object(y)): return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && identical($0.1, $1.1) }
    case (.array, _), (.object, _), (_, .array), (_, .object): return false
    default: return a == b
    }
}

func parse(_ bytes: [UInt8], _ limits: JSONParser.Limits) -> Result<JSONValue, JSONParser.Failure> {
    do { return .success(try JSONParser.parse(bytes, limits: limits)) } catch { return .failure(error) }
}

let harness = Harness(
    name: "json",
    seeds: {
        [
            #"{"type":"submit","id":1,"tenant":"acme","argv":["python3","-c","print(\"hi\")"],"env":{"LANG":"C.UTF-8"},"timeout_s":30.5}"#,
            #"[1,-0,2.5e-3,1E+2,true,false,null,"\u00e9\ud83d\ude00\n",{"a":[[]]}]"#,
            #"  {"id":"x","n":-9223372036854775808,"big":18446744073709551616,"s":"\\\/\b\f\r\t"}  "#,
        ].map { Array($0.utf8) }
    },
    decode: { bytes in blackHole(parse(bytes, RequestCodec.requestLimits)) },
    check: { bytes in
        let strict = parse(bytes, RequestCodec.requestLimits)
        let loose = parse(bytes, .default)
        switch (strict, loose) {
        case (.success(let a), .success(let b)): require(identical(a, b), "the two limits parse one document differently")
        case (.success, .failure(let e)): require(false, "the request limits accept what the default ones refuse: \(e)")
        case (.failure(let e), _): require(e.offset >= 0 && e.offset <= bytes.count, "failure offset \(e.offset) outside the input")
        }
        guard case .success(let v) = loose else { return }
        let text = v.serialized()
        switch parse(text, .default) {
        case .success(let again):
            require(identical(again, v), "serialized and parsed again, the value changed: \(shown(text))")
            require(again.serialized() == text, "serializing twice gives two texts: \(shown(text))")
        case .failure(let e):
            require(false, "the serializer wrote what the parser refuses (\(e)): \(shown(text))")
        }
    })

// libFuzzer's entry points (it supplies main).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { harness.testOneInput(data, size) }

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    harness.initialize()
    return 0
}
