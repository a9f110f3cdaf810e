/// A problem with the policy files. `description` is the message for the operator: it names the
/// file, the line and the key, and says what would be accepted.
public enum PolicyError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The policies directory does not exist or is not a directory.
    case missingDirectory(String)
    /// A required file (a tier file) does not exist.
    case missingFile(String)
    /// A file exists but cannot be read (permissions, not a regular file, too large, not UTF-8).
    case unreadable(file: String, reason: String)
    /// A file whose name is not acceptable where it is (tenants/Bad Name.toml, tiers/gold.toml).
    case invalidFileName(file: String, reason: String)
    /// Not valid TOML (or TOML this parser does not support).
    case syntax(file: String, line: Int, message: String)
    case unknownKey(file: String, line: Int, key: String)
    /// `expected`: e.g. "an integer"; `found`: e.g. `string "64"`.
    case wrongType(file: String, line: Int, key: String, expected: String, found: String)
    case invalidValue(file: String, line: Int, key: String, reason: String)
    /// A tier file does not set `key`.
    case missingKey(file: String, key: String)
    /// A file could not be written (`clawpen tenant set-quota`).
    case unwritable(file: String, reason: String)

    public init(_ error: TOMLError) {
        self = .syntax(file: error.file, line: error.line, message: error.message)
    }

    /// The file the problem is in (or the directory, for `missingDirectory`).
    public var file: String {
        switch self {
        case .missingDirectory(let f), .missingFile(let f): f
        case .unwritable(let f, _): f
        case .unreadable(let f, _), .invalidFileName(let f, _), .syntax(let f, _, _), .unknownKey(let f, _, _),
            .wrongType(let f, _, _, _, _), .invalidValue(let f, _, _, _), .missingKey(let f, _):
            f
        }
    }

    /// The 1-based line, where the problem has one.
    public var line: Int? {
        switch self {
        case .syntax(_, let l, _), .unknownKey(_, let l, _), .wrongType(_, let l, _, _, _),
            .invalidValue(_, let l, _, _):
            l
        default: nil
        }
    }

    /// The key the problem is about, where there is one.
    public var key: String? {
        switch self {
        case .unknownKey(_, _, let k), .wrongType(_, _, let k, _, _), .invalidValue(_, _, let k, _), .missingKey(_, let k): k
        default: nil
        }
    }

    /// What is wrong, without the file, line and key.
    public var reason: String {
        switch self {
        case .missingDirectory, .missingFile: return String(description.dropFirst(file.count + 2))
        case .unreadable(_, let reason): return "cannot read: \(reason)"
        case .unwritable(_, let reason): return "cannot write: \(reason)"
        case .invalidFileName(_, let reason): return reason
        case .syntax(_, _, let message): return message
        case .unknownKey(_, _, let key): return "unknown key (\(Self.hint(forUnknownKey: key)))"
        case .wrongType(_, _, _, let expected, let found): return "expected \(expected), found \(found)"
        case .invalidValue(_, _, _, let reason): return reason
        case .missingKey: return "missing key (a tier file must set every limit: \(TierLimits.requiredKeys.joined(separator: ", ")))"
        }
    }

    /// One line for `clawpen policy check`: `FILE:LINE: KEY: message` (without LINE or KEY where
    /// the problem has none).
    public var report: String {
        var out = file
        if let line { out += ":\(line)" }
        if let key { out += ": \(key)" }
        return out + ": " + reason
    }

    public var description: String {
        switch self {
        case .missingDirectory(let dir):
            return "\(dir): policy directory does not exist (it must contain tiers/free.toml, tiers/pro.toml and tiers/enterprise.toml)"
        case .missingFile(let file):
            return "\(file): file is missing (every tier needs its own file: tiers/free.toml, tiers/pro.toml, tiers/enterprise.toml)"
        case .unreadable(let file, let reason):
            return "\(file): cannot read: \(reason)"
        case .unwritable(let file, let reason):
            return "\(file): cannot write: \(reason)"
        case .invalidFileName(let file, let reason):
            return "\(file): \(reason)"
        case .syntax(let file, let line, let message):
            return "\(file):\(line): \(message)"
        case .unknownKey(let file, let line, let key):
            return "\(file):\(line): unknown key '\(key)' (\(Self.hint(forUnknownKey: key)))"
        case .wrongType(let file, let line, let key, let expected, let found):
            return "\(file):\(line): \(key): expected \(expected), found \(found)"
        case .invalidValue(let file, let line, let key, let reason):
            return "\(file):\(line): \(key): \(reason)"
        case .missingKey(let file, let key):
            return "\(file): missing key '\(key)' (a tier file must set every limit: \(TierLimits.requiredKeys.joined(separator: ", ")))"
        }
    }

    private static func hint(forUnknownKey key: String) -> String {
        if key == "tier" { return "'tier' is only valid in tenants/<name>.toml" }
        let known = TierLimits.keys
        let best = known.map { ($0, editDistance($0, key)) }.min { $0.1 < $1.1 }
        if let best, best.1 <= max(2, key.count / 4) {
            return "did you mean '\(best.0)'?"
        }
        return "known keys: \(known.joined(separator: ", "))"
    }
}

/// Levenshtein distance, for "did you mean" hints.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.unicodeScalars), b = Array(b.unicodeScalars)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
