/// Byte sizes as policies write them: an integer number of bytes, or a string such as
/// "256M", "1G", "512K", "4G", "256MiB", "64MB", "1048576". Units are binary (K = 1024)
/// and case-insensitive; an optional "B" or "iB" may follow the unit.
public enum ByteSize {
    public static let kibibyte: Int64 = 1024
    public static let mebibyte: Int64 = 1024 * 1024
    public static let gibibyte: Int64 = 1024 * 1024 * 1024
    public static let tebibyte: Int64 = 1024 * 1024 * 1024 * 1024

    /// The number of bytes `text` denotes, or nil when it is not a size (or does not fit in Int64).
    public static func parse(_ text: String) -> Int64? {
        var chars = Substring(text)
        while chars.first == " " { chars.removeFirst() }
        while chars.last == " " { chars.removeLast() }
        let digits = chars.prefix { $0 >= "0" && $0 <= "9" }
        guard !digits.isEmpty, let number = Int64(digits) else { return nil }
        var unit = chars.dropFirst(digits.count)
        while unit.first == " " { unit.removeFirst() }
        let multiplier: Int64
        switch unit.lowercased() {
        case "", "b": multiplier = 1
        case "k", "kb", "kib": multiplier = kibibyte
        case "m", "mb", "mib": multiplier = mebibyte
        case "g", "gb", "gib": multiplier = gibibyte
        case "t", "tb", "tib": multiplier = tebibyte
        default: return nil
        }
        let (bytes, overflow) = number.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : bytes
    }

    /// The shortest exact form: "256M", "1G", "1536K", "1000" (bytes).
    public static func format(_ bytes: Int64) -> String {
        guard bytes != 0 else { return "0" }
        for (multiplier, suffix) in [(tebibyte, "T"), (gibibyte, "G"), (mebibyte, "M"), (kibibyte, "K")]
        where bytes % multiplier == 0 {
            return "\(bytes / multiplier)\(suffix)"
        }
        return "\(bytes)"
    }
}
