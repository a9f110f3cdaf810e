import CSystemd
import Glibc
import Logging

/// Where log lines go: to journald with structured fields when stderr is the journal (systemd
/// says so in JOURNAL_STREAM), else plain lines on stderr.
public enum LogSink {
    /// true when JOURNAL_STREAM names the device and inode of our stderr: then systemd connected
    /// stderr to journald, and the native protocol can carry fields that a stream line cannot.
    public static func stderrIsJournal() -> Bool {
        guard let raw = getenv("JOURNAL_STREAM") else { return false }
        let parts = String(cString: raw).split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }

    /// Bootstraps swift-log: journald fields when stderr is the journal, plain lines otherwise.
    public static func bootstrap(level: Logger.Level, identifier: String = "clawpen") -> Bool {
        let journal = stderrIsJournal()
        LoggingSystem.bootstrap { label in
            if journal {
                var h = JournalLogHandler(label: label, identifier: identifier)
                h.logLevel = level
                return h
            }
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        return journal
    }
}

/// A swift-log handler that writes to journald's native socket (sd_journal_sendv): the message,
/// its priority, and every metadata key as a field of its own, upper-cased (`tenant` →
/// `TENANT=`, `job_id` → `JOB_ID=`, `worker_pid` → `WORKER_PID=`), so that
/// `journalctl TENANT=acme` finds a tenant's lines. The message text keeps the metadata as
/// `key=value` too, for a plain `journalctl -u clawpen`.
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    let identifier: String

    public init(label: String, identifier: String) {
        self.label = label
        self.identifier = identifier
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(
        level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?,
        source: String, file: String, function: String, line: UInt
    ) {
        var all = metadata
        if let explicit { all.merge(explicit) { $1 } }
        let sorted = all.sorted { $0.key < $1.key }
        var text = message.description
        for (k, v) in sorted { text += " \(k)=\(v)" }
        var fields = [
            "MESSAGE=" + text,
            "PRIORITY=\(Self.priority(level))",
            "SYSLOG_IDENTIFIER=" + identifier,
            "CODE_FILE=" + file,
            "CODE_LINE=\(line)",
            "CODE_FUNC=" + function,
        ]
        for (k, v) in sorted {
            guard let name = Self.fieldName(k) else { continue }
            fields.append(name + "=" + "\(v)")
        }
        if !Self.send(fields) {
            // The journal refused (or is gone): the line still goes somewhere.
            let plain = "\(label): \(level): \(text)\n"
            var bytes = Array(plain.utf8)
            _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
        }
    }

    /// syslog priorities, as journald stores them.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// A journal field name: A-Z, 0-9 and `_`, not starting with `_` (those are journald's own)
    /// or a digit, at most 64 bytes. nil for a key that cannot become one.
    static func fieldName(_ key: String) -> String? {
        var out = ""
        for u in key.utf8 {
            switch u {
            case UInt8(ascii: "a")...UInt8(ascii: "z"): out.append(Character(Unicode.Scalar(u - 32)))
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): out.append(Character(Unicode.Scalar(u)))
            default: out.append("_")
            }
        }
        guard let first = out.utf8.first, first != UInt8(ascii: "_"), !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first),
            out.utf8.count <= 64
        else { return nil }
        // Fields the handler sets itself are not overridden by metadata.
        if ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "MESSAGE_ID"].contains(out) { return nil }
        return out
    }

    /// One sd_journal_sendv call: the fields laid end to end in one buffer, an iovec for each.
    static func send(_ fields: [String]) -> Bool {
        var bytes: [UInt8] = []
        var ranges: [(Int, Int)] = []
        for f in fields {
            ranges.append((bytes.count, f.utf8.count))
            bytes.append(contentsOf: f.utf8)
        }
        return bytes.withUnsafeMutableBytes { raw -> Bool in
            guard let base = raw.baseAddress else { return false }
            let iov = ranges.map { iovec(iov_base: base + $0.0, iov_len: $0.1) }
            return iov.withUnsafeBufferPointer { p in
                guard let first = p.baseAddress else { return false }
                return sd_journal_sendv(first, Int32(p.count)) == 0
            }
        }
    }
}
