/// Warnings a client or a tenant can provoke over and over (a limit reached, left and reached
/// again, as fast as it can open and close connections): at most one per key per `window`
/// seconds, so that none of them floods the journal every tenant shares. At most `maxKeys`
/// keys are remembered; past that, those whose window has passed are dropped first.
struct WarningThrottle<Key: Hashable> {
    let window: Double
    let maxKeys: Int
    private var lastAt: [Key: Double] = [:]

    init(window: Double = 10, maxKeys: Int = 1024) {
        self.window = window
        self.maxKeys = maxKeys
    }

    /// True (and the key's window starts now) when `key` was not warned of within the window.
    mutating func allows(_ key: Key, now: Double = Clock.monotonic()) -> Bool {
        if let last = lastAt[key], now - last < window { return false }
        if lastAt[key] == nil && lastAt.count >= maxKeys {
            lastAt = lastAt.filter { now - $0.value < window }
            if lastAt.count >= maxKeys { lastAt.removeAll() }
        }
        lastAt[key] = now
        return true
    }

    mutating func forget(_ key: Key) { lastAt[key] = nil }
}
