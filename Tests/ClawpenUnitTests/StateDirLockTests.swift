@testable import ClawpenSupervisor
import Foundation
import XCTest

/// One daemon per state directory (StateDirLock): a second taker is refused naming the
/// holder, the lock goes with its holder, and a link in its place is never followed.
final class StateDirLockTests: XCTestCase {
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "statelock-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testASecondTakerIsRefusedNamingTheHolderUntilTheFirstLetsGo() throws {
        var first: StateDirLock? = try StateDirLock.acquire(stateDir: dir)
        XCTAssertEqual(first?.path, dir + "/clawpen.lock")
        // flock belongs to the open file: a second open in the same process is a second taker.
        XCTAssertThrowsError(try StateDirLock.acquire(stateDir: dir)) { error in
            guard case .stateDirInUse(let stateDir, let file, let holder) = error as? ServeError else { return XCTFail("\(error)") }
            XCTAssertEqual(stateDir, self.dir)
            XCTAssertEqual(file, self.dir + "/clawpen.lock")
            XCTAssertEqual(holder, getpid())
            XCTAssertTrue("\(error)".contains("is in use"), "\(error)")
            XCTAssertTrue("\(error)".contains("--state-dir"), "says what to do: \(error)")
        }
        first = nil
        XCTAssertNotNil(try StateDirLock.acquire(stateDir: dir), "free again once the holder lets go")
        var st = stat()
        XCTAssertEqual(stat(dir + "/clawpen.lock", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
    }

    func testALinkInPlaceOfTheLockFileIsNotFollowed() throws {
        let target = dir + "/elsewhere"
        try "keep me\n".write(toFile: target, atomically: true, encoding: .utf8)
        XCTAssertEqual(symlink(target, dir + "/clawpen.lock"), 0)
        XCTAssertThrowsError(try StateDirLock.acquire(stateDir: dir)) { error in
            guard case .stateLock(_, let problem) = error as? ServeError else { return XCTFail("\(error)") }
            XCTAssertTrue(problem.contains("cannot open"), problem)
        }
        XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "keep me\n", "the link's target is untouched")
    }

    func testTheHolderPIDIsReadOnlyWhenItIsOne() throws {
        let path = dir + "/clawpen.lock"
        try "not a pid\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertNil(StateDirLock.holderPID(path))
        try "4242\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertEqual(StateDirLock.holderPID(path), 4242)
    }
}
