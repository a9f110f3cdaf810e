/// A validated tenant name: `^[a-z0-9][a-z0-9_-]{0,62}$` (docs/protocol.md). Every path, uid, cgroup
/// name and log field derived from a tenant goes through this type, so a name like `../b` or
/// `a/b` is refused before it can reach the file system.
public struct TenantName: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let value: String

    public enum Invalid: Error, Equatable, Sendable, CustomStringConvertible {
        case empty
        case tooLong(Int)
        case badFirstCharacter(String)
        case badCharacter(String)

        public var description: String {
            let rule = "tenant names match ^[a-z0-9][a-z0-9_-]{0,62}$"
            switch self {
            case .empty: return "tenant name is empty (\(rule))"
            case .tooLong(let n): return "tenant name is \(n) characters long, the limit is 63 (\(rule))"
            case .badFirstCharacter(let c): return "tenant name may not start with '\(c)' (\(rule))"
            case .badCharacter(let c): return "tenant name may not contain '\(c)' (\(rule))"
            }
        }
    }

    public init(validating raw: String) throws(Invalid) {
        let bytes = Array(raw.utf8)
        guard let first = bytes.first else { throw .empty }
        guard bytes.count <= 63 else { throw .tooLong(bytes.count) }
        func isLowerAlnum(_ b: UInt8) -> Bool { (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) }
        guard isLowerAlnum(first) else { throw .badFirstCharacter(Self.printable(first)) }
        for b in bytes.dropFirst() where !(isLowerAlnum(b) || b == 0x2D || b == 0x5F) {
            throw .badCharacter(Self.printable(b))
        }
        self.value = raw
    }

    private static func printable(_ b: UInt8) -> String {
        if b >= 0x21 && b < 0x7F { return String(UnicodeScalar(b)) }
        let hex = String(b, radix: 16)
        return "\\x" + (hex.count == 1 ? "0" + hex : hex)
    }

    public var description: String { value }
    public static func < (a: TenantName, b: TenantName) -> Bool { a.value < b.value }
}
