import ClawpenWire

extension Supervisor {
    /// One `egress.denied` or `secret.used` report, through the window (AuditWindow).
    func egressAudit(_ tenant: TenantName, action: String, rule: String, host: String, port: Int64) {
        auditCoalesced(AuditWindow.Key(tenant: tenant, kind: .egress, action: action, rule: rule, subject: host, port: port))
    }
}
