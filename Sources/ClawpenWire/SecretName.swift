/// A secret's name: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`. It reaches policy keys
/// (`[secrets.NAME]`), audit details and log lines, never a path. One check for the policy
/// loader and the wire, so that a name one accepts the other cannot refuse.
public enum SecretName {
    public static func isValid(_ name: String) -> Bool {
        let u = Array(name.utf8)
        guard (1...64).contains(u.count) else { return false }
        func ok(_ c: UInt8, first: Bool) -> Bool {
            switch c {
            case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
            case 0x5F, 0x2E, 0x2D: return !first
            default: return false
            }
        }
        return u.enumerated().allSatisfy { ok($0.element, first: $0.offset == 0) }
    }
}
