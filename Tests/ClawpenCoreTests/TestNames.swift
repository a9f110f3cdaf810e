import ClawpenWire

extension TenantName {
    /// A test's own tenant name (a literal the test knows to be valid).
    static func t(_ raw: String) -> TenantName {
        // Tests only: a literal that breaks the rule is a bug in the test.
        try! TenantName(validating: raw)
    }
}
