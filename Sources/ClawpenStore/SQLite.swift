import CSQLite
import Glibc

/// Failures of the store, each naming the database and what SQLite said.
public enum StoreError: Error, CustomStringConvertible, Sendable {
    case open(path: String, message: String)
    case sql(path: String, statement: String, message: String)
    case constraint(message: String)
    case corrupt(String)
    /// The database was written by a newer clawpen (its schema version is above this build's).
    case newerSchema(path: String, found: Int, known: Int)
    /// A job record's sealed fields did not open (moved to another row, or its tenant's key is
    /// gone or not loaded): that record only, never the whole store.
    case unreadable(job: String, message: String)
    /// The file system of the state dir is full (SQLITE_FULL, or an I/O error with ENOSPC or
    /// EDQUOT): the write was rolled back whole; the same write succeeds once space returns.
    case full(path: String, statement: String, errno: Int32)
    /// The file is not a database, or its pages do not hold together (SQLITE_NOTADB,
    /// SQLITE_CORRUPT): waiting does not mend it.
    case corruptFile(path: String, message: String)
    /// Another process holds the database's lock past the busy timeout (SQLITE_BUSY,
    /// SQLITE_LOCKED).
    case locked(path: String, message: String)

    public var description: String {
        switch self {
        case .open(let path, let m): return "cannot open the state database \(path): \(m) (check that the state dir exists and is writable)"
        case .sql(let path, let s, let m): return "state database \(path): \(m) (in: \(s.prefix(80)))"
        case .constraint(let m): return "state database constraint: \(m)"
        case .corrupt(let m): return "state database holds unexpected data: \(m)"
        case .newerSchema(let path, let found, let known):
            return
                "state database \(path) has schema version \(found), newer than this clawpen's \(known): refusing to open it (run the clawpen release that wrote it, or a newer one)"
        case .unreadable(let job, let m): return "job \(job): its record cannot be decrypted: \(m)"
        case .full(let path, let s, let e):
            let why = e == 0 ? "SQLITE_FULL" : errnoName(e)
            return
                "the disk is full: state database \(path) cannot grow (\(why), in: \(s.prefix(40))); free space on the state dir's file system, clawpen resumes by itself"
        case .corruptFile(let path, let m):
            return
                "state database \(path) is corrupt (\(m)): stop clawpen, move the file (with its -wal and -shm) aside and restore it from a backup, or start with an empty state dir"
        case .locked(let path, let m):
            return
                "state database \(path) is locked by another process (\(m)): stop the other clawpen serve or sqlite3 session using it (fuser \(path)), then start again"
        }
    }
}

extension StoreError {
    /// A failure that waiting or retrying does not mend: `clawpen serve` exits 78 (EX_CONFIG)
    /// on it at start instead of retrying.
    public var needsOperator: Bool {
        switch self {
        case .newerSchema, .corruptFile, .locked: return true
        default: return false
        }
    }

    /// The disk is full: a write to retry once space returns.
    public var isDiskFull: Bool {
        if case .full = self { return true }
        return false
    }
}

/// A single SQLite connection with a statement cache. Not thread-safe: the supervisor uses it
/// from its one event-loop thread only.
final class SQLiteConnection {
    private var handle: OpaquePointer?
    private var cache: [String: OpaquePointer] = [:]
    let path: String

    init(path: String) throws(StoreError) {
        self.path = path
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "error \(rc)"
            let failure = db.map { SQLiteConnection.classify(rc, $0, path: path, statement: "open") } ?? nil
            sqlite3_close(db)
            throw failure ?? .open(path: path, message: message)
        }
        handle = db
        sqlite3_busy_timeout(db, 5000)
        sqlite3_extended_result_codes(db, 1)
    }

    deinit {
        for stmt in cache.values { sqlite3_finalize(stmt) }
        sqlite3_close_v2(handle)
    }

    private func message() -> String { String(cString: sqlite3_errmsg(handle)) }

    /// The failures a caller acts on differently, typed by SQLite's result code (and the errno
    /// of an I/O error); nil: any other failure, reported as `.sql`.
    static func classify(_ rc: Int32, _ db: OpaquePointer, path: String, statement: String) -> StoreError? {
        let m = String(cString: sqlite3_errmsg(db))
        switch rc & 0xFF {
        case SQLITE_FULL: return .full(path: path, statement: statement, errno: sqlite3_system_errno(db))
        case SQLITE_IOERR:
            let e = sqlite3_system_errno(db)
            return e == ENOSPC || e == EDQUOT ? .full(path: path, statement: statement, errno: e) : nil
        case SQLITE_CORRUPT, SQLITE_NOTADB: return .corruptFile(path: path, message: m)
        case SQLITE_BUSY, SQLITE_LOCKED: return .locked(path: path, message: m)
        default: return nil
        }
    }

    private func failure(_ rc: Int32, _ sql: String, _ m: String? = nil) -> StoreError {
        guard let handle, let typed = Self.classify(rc, handle, path: path, statement: sql) else {
            return .sql(path: path, statement: sql, message: m ?? message())
        }
        return typed
    }

    func exec(_ sql: String) throws(StoreError) {
        var err: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &err)
        if rc != SQLITE_OK {
            let m = err.map { String(cString: $0) } ?? message()
            sqlite3_free(err)
            throw failure(rc, sql, m)
        }
    }

    /// Runs `body` with a prepared (cached) statement, reset afterwards.
    func with<T>(_ sql: String, _ bind: [SQLValue], _ body: (Statement) throws(StoreError) -> T) throws(StoreError) -> T {
        let stmt: OpaquePointer
        if let cached = cache[sql] {
            stmt = cached
        } else {
            var s: OpaquePointer?
            let rc = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &s, nil)
            guard rc == SQLITE_OK, let s else { throw failure(rc, sql) }
            cache[sql] = s
            stmt = s
        }
        defer { sqlite3_reset(stmt); sqlite3_clear_bindings(stmt) }
        for (i, v) in bind.enumerated() {
            let idx = Int32(i + 1)
            let rc: Int32
            switch v {
            case .null: rc = sqlite3_bind_null(stmt, idx)
            case .int(let x): rc = sqlite3_bind_int64(stmt, idx, x)
            case .double(let x): rc = sqlite3_bind_double(stmt, idx, x)
            case .text(let x): rc = sqlite3_bind_text(stmt, idx, x, -1, clawpen_sqlite_transient())
            case .blob(let x):
                rc = x.withUnsafeBytes {
                    sqlite3_bind_blob(stmt, idx, $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32($0.count), clawpen_sqlite_transient())
                }
            }
            guard rc == SQLITE_OK else { throw .sql(path: path, statement: sql, message: message()) }
        }
        return try body(Statement(stmt: stmt, connection: self, sql: sql))
    }

    /// Executes a statement that returns no rows; returns the number of changed rows.
    @discardableResult
    func run(_ sql: String, _ bind: [SQLValue] = []) throws(StoreError) -> Int {
        try with(sql, bind) { (s: Statement) throws(StoreError) -> Int in
            try s.stepDone()
            return Int(sqlite3_changes(self.handle))
        }
    }

    func rows<T>(_ sql: String, _ bind: [SQLValue] = [], _ map: (Row) throws(StoreError) -> T) throws(StoreError) -> [T] {
        try with(sql, bind) { (s: Statement) throws(StoreError) -> [T] in
            var out: [T] = []
            while try s.step() { out.append(try map(Row(stmt: s.stmt))) }
            return out
        }
    }

    struct Statement {
        let stmt: OpaquePointer
        let connection: SQLiteConnection
        let sql: String

        /// true: a row is ready; false: done.
        func step() throws(StoreError) -> Bool {
            switch sqlite3_step(stmt) {
            case SQLITE_ROW: return true
            case SQLITE_DONE: return false
            case let rc where rc & 0xFF == SQLITE_CONSTRAINT:
                throw .constraint(message: connection.message())
            case let rc: throw connection.failure(rc, sql)
            }
        }
        func stepDone() throws(StoreError) { _ = try step() }
    }

    struct Row {
        let stmt: OpaquePointer
        func isNull(_ i: Int32) -> Bool { sqlite3_column_type(stmt, i) == SQLITE_NULL }
        func int(_ i: Int32) -> Int64 { sqlite3_column_int64(stmt, i) }
        func optionalInt(_ i: Int32) -> Int64? { isNull(i) ? nil : int(i) }
        func double(_ i: Int32) -> Double { sqlite3_column_double(stmt, i) }
        func optionalDouble(_ i: Int32) -> Double? { isNull(i) ? nil : double(i) }
        func text(_ i: Int32) -> String {
            guard let p = sqlite3_column_text(stmt, i) else { return "" }
            return String(cString: p)
        }
        func optionalText(_ i: Int32) -> String? { isNull(i) ? nil : text(i) }
        func blob(_ i: Int32) -> [UInt8] {
            let n = Int(sqlite3_column_bytes(stmt, i))
            guard n > 0, let p = sqlite3_column_blob(stmt, i) else { return [] }
            return Array(UnsafeRawBufferPointer(start: p, count: n))
        }
    }
}

/// "ENOSPC (No space left on device)".
func errnoName(_ e: Int32) -> String {
    let name: String
    switch e {
    case ENOSPC: name = "ENOSPC"
    case EDQUOT: name = "EDQUOT"
    case EIO: name = "EIO"
    default: name = "errno \(e)"
    }
    return "\(name) (\(String(cString: strerror(e))))"
}

enum SQLValue: Sendable {
    case null
    case int(Int64)
    case double(Double)
    case text(String)
    case blob([UInt8])

    static func optional(_ v: String?) -> SQLValue { v.map(SQLValue.text) ?? .null }
    static func optional(_ v: Double?) -> SQLValue { v.map(SQLValue.double) ?? .null }
    static func optional(_ v: Int64?) -> SQLValue { v.map(SQLValue.int) ?? .null }
}
