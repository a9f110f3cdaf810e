import ClawpenSecrets
import ClawpenStore
import Glibc
import Logging

/// Where the daemon's master key lives: the state dir's `master.key` (which `key rotate` may
/// replace), or a file or credential the operator provides (which clawpen never writes).
enum MasterKeyLocation: Equatable {
    case stateDir(path: String)
    case external(source: String)
}

struct LoadedKeys {
    let master: MasterKey
    let location: MasterKeyLocation
}

/// Chooses the master key at start, checked against the data keys the store holds: a key that
/// does not wrap them, or no key where they exist, stops the daemon (exit 78) with what to do,
/// instead of starting and failing on every record. Finishes a rotation a crash interrupted
/// (docs/tenant-data.md, "Rotating the master key").
enum MasterKeySetup {
    static func pendingPath(_ path: String) -> String { path + ".next" }

    static func load(_ config: ServeConfig, store: Store, logger: Logger) throws(ServeError) -> LoadedKeys {
        let live: [TenantKeyRecord]
        do { live = try store.liveTenantKeys() } catch { throw .store(error) }
        let wrapped = live.filter { $0.keyFile == nil }
        let ids = Set(wrapped.map(\.masterKeyID))
        func matches(_ k: MasterKey) -> Bool { ids.isSubset(of: [k.id]) }
        func mismatch(_ k: MasterKey) -> ServeError {
            .masterKey(
                "wrong master key: the state database's \(wrapped.count) data key(s) are wrapped by master key \(ids.sorted().joined(separator: ", ")), but \(k.source) holds master key \(k.id); start the daemon with the key this state dir was written with (after `clawpen key rotate --new-key-file F`, that is F)"
            )
        }
        do {
            if let file = config.masterKeyFile {
                let k = try MasterKey.fromFile(file)
                guard matches(k) else { throw mismatch(k) }
                return LoadedKeys(master: k, location: .external(source: k.source))
            }
            if let dir = getenv("CREDENTIALS_DIRECTORY").map({ String(cString: $0) }), !dir.isEmpty, access(dir + "/clawpen-master-key", F_OK) == 0 {
                let k = try MasterKey.fromFile(dir + "/clawpen-master-key", source: "systemd credential clawpen-master-key")
                guard matches(k) else { throw mismatch(k) }
                return LoadedKeys(master: k, location: .external(source: k.source))
            }
            let path = config.stateDir + "/master.key"
            let next = pendingPath(path)
            let current = access(path, F_OK) == 0 ? try MasterKey.fromFile(path) : nil
            if let current, matches(current) {
                if access(next, F_OK) == 0 {
                    // A rotation that stopped before its commit: the old key still wraps everything.
                    unlink(next)
                    logger.notice("removed the new master key of a rotation that did not complete", metadata: ["path": "\(next)"])
                }
                return LoadedKeys(master: current, location: .stateDir(path: path))
            }
            if access(next, F_OK) == 0 {
                let n = try MasterKey.fromFile(next)
                if matches(n), !ids.isEmpty {
                    // A rotation that committed and stopped before its rename: finish it.
                    guard rename(next, path) == 0 else { throw KeyError("master key", errno: errno, "cannot rename \(next) to \(path)") }
                    syncDirectory(of: path)
                    logger.notice("completed an interrupted master key rotation", metadata: ["path": "\(path)", "key_id": "\(n.id)"])
                    return LoadedKeys(master: try MasterKey.fromFile(path), location: .stateDir(path: path))
                }
            }
            if let current { throw mismatch(current) }
            guard ids.isEmpty else {
                throw ServeError.masterKey(
                    "master key missing: \(path) does not exist, but the state database holds \(wrapped.count) data key(s) wrapped by master key \(ids.sorted().joined(separator: ", ")); nothing sealed can be opened without it, so the daemon does not start (restore the key file from its backup, or name it with --master-key-file)"
                )
            }
            if access(next, F_OK) == 0 { unlink(next) }
            let k = try MasterKey.generate(at: path)
            logger.notice("master key generated (mode 0600); back it up: job records and secrets cannot be read without it", metadata: ["path": "\(path)"])
            return LoadedKeys(master: k, location: .stateDir(path: path))
        } catch let e as ServeError {
            throw e
        } catch let e as KeyError {
            throw .masterKey(e.description)
        } catch {
            throw .masterKey("\(error)")
        }
    }
}
