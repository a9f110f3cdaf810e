@testable import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import XCTest

/// Sub-job trees (docs/subjobs.md): the tree rules at admission, cancels that reach every
/// descendant, a root's end, the CPU and time budgets while a tree runs, and the slot a waiting
/// parent lends, all on a fake clock.
final class TreeTests: XCTestCase {
    var shell: FakeShell!
    var t: TenantName!

    func setUp(limits change: (inout TierLimits) -> Void = { _ in }) {
        shell = FakeShell()
        t = shell.addTenant("acme", limits: FakeShell.limits(.free, change))
    }

    /// A root submitted from outside, running on a ready worker.
    func runningRoot(_ id: String = "root") throws -> JobRecord {
        let job = try shell.submit(t, id: id)
        if let w = shell.worker(t) { shell.ready(w) }
        return try XCTUnwrap(shell.core.runningJob(job.id, tenant: t), "the root runs")
    }

    /// What `parent` submitting from inside gets.
    func admitSub(_ parent: JobRecord, _ id: String) -> Result<JobRecord, Refusal> {
        shell.core.admit(SubmitRequest(tenant: t, argv: ["/usr/bin/true"]), tenant: shell.tenant(t), jobID: id, parent: parent, isExecutable: { _ in true })
    }

    /// Admits and commits a sub-job of `parent`.
    @discardableResult
    func sub(_ parent: JobRecord, _ id: String) throws -> JobRecord {
        let job = try admitSub(parent, id).get()
        shell.perform(shell.core.accepted([job]))
        return job
    }

    func cancels(_ w: WorkerRef) -> [String] {
        shell.sent.compactMap { if $0.0 == w, case .cancel(let id) = $0.1 { id } else { nil } }
    }

    func rule(_ r: Result<JobRecord, Refusal>) -> String? {
        if case .failure(let f) = r { return f.rule }
        return nil
    }

    func testDepthStopsAtMaxDepth() throws {
        setUp { $0.maxConcurrentRuns = 32 }
        var parent = try runningRoot()
        var depth = 0
        for i in 1...10 {
            let r = admitSub(parent, "d\(i)")
            guard case .success(let job) = r else {
                XCTAssertEqual(rule(r), "tree_max_depth")
                if case .failure(let f) = r {
                    XCTAssertEqual(f.error.code, .quotaExceeded)
                    XCTAssertEqual(f.error.details["quota"]?.stringValue, "tree_max_depth")
                    XCTAssertTrue(f.error.message.contains("max_depth is 3"), f.error.message)
                }
                break
            }
            XCTAssertEqual(job.depth, i)
            XCTAssertEqual(job.parentID, parent.id)
            XCTAssertEqual(job.rootID, "root")
            shell.perform(shell.core.accepted([job]))
            parent = try XCTUnwrap(shell.core.runningJob(job.id, tenant: t))
            depth = i
        }
        XCTAssertEqual(depth, 3, "a chain grows to max_depth (3) below the root and no further")
        XCTAssertEqual(shell.core.tree(t, root: "root")?.deepest, 3)
    }

    func testTreeMaxJobsCountsTheRootAndEndedJobs() throws {
        setUp {
            $0.treeMaxJobs = 5; $0.maxConcurrentRuns = 32
        }
        let root = try runningRoot()
        let w = try XCTUnwrap(shell.worker(t))
        var accepted = 0
        for i in 0..<20 {
            let r = admitSub(root, "s\(i)")
            guard case .success(let job) = r else {
                XCTAssertEqual(rule(r), "tree_max_jobs")
                break
            }
            shell.perform(shell.core.accepted([job]))
            accepted += 1
            // Ended jobs still count: the tree's size is what it ever had.
            shell.report(w, job.id)
        }
        XCTAssertEqual(accepted, 4, "root + 4 sub-jobs = tree_max_jobs 5")
    }

    func testSubJobsCountAgainstJobsPerMinute() throws {
        setUp {
            $0.jobsPerMinute = 3; $0.maxConcurrentRuns = 32
        }
        let root = try runningRoot()
        try sub(root, "a")
        try sub(root, "b")
        XCTAssertEqual(rule(admitSub(root, "c")), "jobs_per_minute", "the root took one token, two sub-jobs the rest")
    }

    func testCancelingAJobCancelsItsDescendants() throws {
        setUp { $0.maxConcurrentRuns = 2 }
        let root = try runningRoot()
        let w = try XCTUnwrap(shell.worker(t))
        let child = try sub(root, "child")
        let running = try XCTUnwrap(shell.core.runningJob(child.id, tenant: t), "two slots: the child runs")
        let grandchild = try sub(running, "grandchild")
        XCTAssertNil(shell.core.runningJob(grandchild.id, tenant: t), "no third slot: queued")
        let (outcome, actions) = shell.core.cancel(child.id, tenant: t)
        shell.perform(actions)
        XCTAssertEqual(outcome, .cancelSent)
        XCTAssertEqual(cancels(w), ["child"])
        let gone = try XCTUnwrap(shell.finished.first { $0.id == "grandchild" }, "the queued grandchild ends at once")
        XCTAssertEqual(gone.state, .canceled)
        XCTAssertEqual(gone.result?.error?.details["rule"]?.stringValue, "tree_parent_canceled")
        XCTAssertNotNil(shell.core.runningJob(root.id, tenant: t), "the job above is untouched")
    }

    func testARootsEndCancelsItsRunningDescendants() throws {
        setUp { $0.maxConcurrentRuns = 2 }
        let root = try runningRoot()
        let w = try XCTUnwrap(shell.worker(t))
        try sub(root, "a")
        try sub(root, "b") // queued
        shell.report(w, root.id)
        XCTAssertEqual(cancels(w), ["a"], "the running descendant is killed")
        XCTAssertEqual(shell.finished.first { $0.id == "b" }?.state, .canceled, "the queued one ends canceled")
        shell.perform(
            shell.core.jobReported(
                w,
                JobReport(
                    jobID: "a", outcome: .canceled(signal: 9), stdout: [], stderr: [], stdoutTruncated: false, stderrTruncated: false,
                    runMicros: 1, cpuMicros: 1, maxRSSKiB: 1)))
        let a = try XCTUnwrap(shell.finished.first { $0.id == "a" })
        XCTAssertEqual(a.state, .canceled)
        XCTAssertEqual(a.result?.error?.details["rule"]?.stringValue, "tree_root_ended")
        XCTAssertNil(shell.core.tree(t, root: "root"), "a tree with nothing live is gone")
    }

    func testATreeOverItsCPUBudgetIsCanceledAsAWhole() throws {
        setUp {
            $0.treeCPUSeconds = 1; $0.maxConcurrentRuns = 4
        }
        let root = try runningRoot()
        let w = try XCTUnwrap(shell.worker(t))
        try sub(root, "spin1")
        try sub(root, "spin2")
        shell.probe.jobCPU = ["root": 100_000, "spin1": 300_000, "spin2": 300_000]
        shell.advance(0.25)
        XCTAssertTrue(cancels(w).isEmpty, "0.7 s of 1 s: nothing happens")
        XCTAssertEqual(shell.core.treeSummary(shell.tenant(t)).cpuSeconds, 0.7, accuracy: 0.001)
        shell.probe.jobCPU["spin2"] = 700_000
        shell.advance(0.25)
        XCTAssertEqual(Set(cancels(w)), ["root", "spin1", "spin2"], "over budget: every job of the tree")
        let audit = try XCTUnwrap(shell.audits.first { $0.action == "tree.canceled" })
        XCTAssertEqual(audit.rule, "tree_cpu_seconds")
        // While it is being canceled, its jobs may not submit more.
        XCTAssertEqual(rule(admitSub(try XCTUnwrap(shell.core.runningJob("spin1", tenant: t)), "late")), "tree_cpu_seconds")
        shell.perform(
            shell.core.jobReported(
                w,
                JobReport(
                    jobID: "spin1", outcome: .canceled(signal: 9), stdout: [], stderr: [], stdoutTruncated: false, stderrTruncated: false,
                    runMicros: 1, cpuMicros: 1, maxRSSKiB: 1)))
        XCTAssertEqual(shell.finished.first { $0.id == "spin1" }?.result?.error?.details["rule"]?.stringValue, "tree_cpu_seconds")
    }

    func testCPUBudgetIsCheckedAtAdmission() throws {
        setUp { $0.treeCPUSeconds = 1 }
        let root = try runningRoot()
        shell.probe.jobCPU = ["root": 1_500_000]
        XCTAssertEqual(rule(admitSub(root, "x")), "tree_cpu_seconds", "a root over the budget may not start its first sub-job")
    }

    func testATreeOverItsTimeIsCanceled() throws {
        setUp {
            $0.treeTimeoutSeconds = 5; $0.maxConcurrentRuns = 4
        }
        let root = try runningRoot()
        let w = try XCTUnwrap(shell.worker(t))
        try sub(root, "a")
        shell.advance(4)
        XCTAssertTrue(cancels(w).isEmpty)
        shell.advance(1.5)
        XCTAssertEqual(Set(cancels(w)), ["root", "a"])
        XCTAssertEqual(shell.audits.first { $0.action == "tree.canceled" }?.rule, "tree_timeout_s")
    }

    func testAJobThatNeverSubmitsHasNoTreeBudget() throws {
        setUp {
            $0.treeCPUSeconds = 1; $0.treeTimeoutSeconds = 1
        }
        let root = try runningRoot()
        let w = try XCTUnwrap(shell.worker(t))
        shell.probe.jobCPU = [root.id: 50_000_000]
        shell.advance(10)
        XCTAssertTrue(cancels(w).isEmpty, "a lone job is bounded by its timeout and the tenant's quotas, as before")
        XCTAssertNil(shell.core.tree(t, root: root.id))
    }

    func testAParentWaitingForItsChildLendsItsSlot() throws {
        setUp { $0.maxConcurrentRuns = 1 }
        let root = try runningRoot()
        let w = try XCTUnwrap(shell.worker(t))
        let child = try sub(root, "child")
        XCTAssertNil(shell.core.runningJob(child.id, tenant: t), "one slot, held by the root: the child waits")
        let (lent, actions) = shell.core.agentWaitBegan(t, waiter: root.id, target: child.id)
        shell.perform(actions)
        XCTAssertTrue(lent)
        XCTAssertNotNil(shell.core.runningJob(child.id, tenant: t), "the waiting root lends its slot: the child starts")
        // The lent slot is the only one: a second child still waits.
        let second = try sub(root, "second")
        XCTAssertNil(shell.core.runningJob(second.id, tenant: t))
        shell.report(w, child.id)
        XCTAssertNil(shell.core.runningJob(second.id, tenant: t), "the root counts again as its child ends: the second child still waits")
        XCTAssertEqual(shell.core.running, 1, "the host's count is back to the root alone")
        shell.report(w, root.id)
        XCTAssertEqual(shell.core.running, 0)
    }

    func testAWaitGivenUpTakesTheLentSlotBack() throws {
        setUp { $0.maxConcurrentRuns = 1 }
        let root = try runningRoot()
        let w = try XCTUnwrap(shell.worker(t))
        let child = try sub(root, "child")
        shell.perform(shell.core.agentWaitBegan(t, waiter: root.id, target: child.id).1)
        XCTAssertNotNil(shell.core.runningJob(child.id, tenant: t))
        XCTAssertTrue(shell.core.isLending(t, waiter: root.id, target: child.id))
        // The agent hangs up: the root counts again while its child runs on.
        shell.core.agentWaitEnded(t, waiter: root.id, target: child.id)
        XCTAssertFalse(shell.core.isLending(t, waiter: root.id, target: child.id))
        XCTAssertEqual(shell.tenant(t).lentSlots, [:])
        XCTAssertEqual(shell.core.running, 2, "both count: the root took its slot back")
        let second = try sub(root, "second")
        XCTAssertNil(shell.core.runningJob(second.id, tenant: t), "no slot is free for another child")
        // Given up twice, or after the target's end: nothing more changes.
        shell.core.agentWaitEnded(t, waiter: root.id, target: child.id)
        shell.report(w, child.id)
        XCTAssertEqual(shell.core.running, 1)
        shell.core.agentWaitEnded(t, waiter: root.id, target: child.id)
        XCTAssertEqual(shell.core.running, 1, "a lend already returned is not returned twice")
        XCTAssertNotNil(shell.core.runningJob(root.id, tenant: t))
    }

    func testAChainOfWaitingParentsDoesNotDeadlock() throws {
        setUp {
            $0.maxConcurrentRuns = 1; $0.maxDepth = 10
        }
        var parent = try runningRoot()
        let w = try XCTUnwrap(shell.worker(t))
        var chain = [parent.id]
        for i in 1...5 {
            let child = try sub(parent, "c\(i)")
            shell.perform(shell.core.agentWaitBegan(t, waiter: parent.id, target: child.id).1)
            parent = try XCTUnwrap(shell.core.runningJob(child.id, tenant: t), "level \(i) starts although every level holds a slot")
            chain.append(child.id)
        }
        // Unwind: each ends, its parent's wait ends.
        for (i, id) in chain.enumerated().reversed() {
            shell.report(w, id)
            if i > 0 { XCTAssertEqual(shell.core.running, 1, "level \(i - 1) counts again as \(id) ends; the levels above still wait") }
        }
        XCTAssertEqual(shell.core.running, 0)
        XCTAssertEqual(shell.tenant(t).lentSlots, [:])
    }

    func testAParentThatEndsWhileWaitingGivesItsSlotBackOnce() throws {
        setUp { $0.maxConcurrentRuns = 1 }
        let root = try runningRoot()
        let w = try XCTUnwrap(shell.worker(t))
        let child = try sub(root, "child")
        shell.perform(shell.core.agentWaitBegan(t, waiter: root.id, target: child.id).1)
        shell.report(w, root.id) // the root ends (its child is canceled)
        shell.perform(
            shell.core.jobReported(
                w,
                JobReport(
                    jobID: child.id, outcome: .canceled(signal: 9), stdout: [], stderr: [], stdoutTruncated: false, stderrTruncated: false,
                    runMicros: 1, cpuMicros: 1, maxRSSKiB: 1)))
        XCTAssertEqual(shell.core.running, 0, "no slot counted twice nor lost")
    }
}
