// Every command sees TenantName (the one tenant-name validator) without an import of its own.
@_exported import ClawpenWire
