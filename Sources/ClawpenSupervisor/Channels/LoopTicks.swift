import NIOCore
import NIOPosix

/// The supervisor's event loop, tick by tick: how much of this tick went to clients' requests,
/// so that no tick grows long enough to stall everyone (ClientHandler's fairness). NIO tells of
/// every tick's end (`processedTick`, on the loop's own thread); a tick is one wait for I/O, the
/// I/O it found, and every task due.
///
/// Why ticks and not tasks: NIO runs every task that is due before it waits for I/O again,
/// tasks that tasks schedule included, so a connection that gives way with `execute` is back in
/// the same tick. Connections over the budget give way to ClientTurns instead: one task a
/// little in the future (`yieldDelay`) takes them up again in turn, so the tick can end, the
/// loop reads what every other client sent (a ping that waited behind ten thousand pipelined
/// `job.wait`s of a hundred clients: 55 ms before, measured), and they go on in the next tick.
///
/// Confined to the loop's thread (hence `@unchecked Sendable`: NIO wants a Sendable delegate).
final class LoopTicks: NIOEventLoopMetricsDelegate, @unchecked Sendable {
    /// Request handling one tick may take before connections give way.
    static let budgetNanos: UInt64 = 250_000
    /// How far ahead a connection that gave way is taken up again: past the end of this tick.
    static let yieldDelay = TimeAmount.microseconds(20)

    /// Counts the ticks that ended.
    private(set) var tick: UInt64 = 0
    /// Nanoseconds of request handling in the current tick.
    private(set) var spentNanos: UInt64 = 0
    /// Ticks in which the budget ran out (connections gave way), since start.
    private(set) var exhaustedTicks: UInt64 = 0
    private var exhausted = false
    /// The connections that asked to be served lately, and the requests held back since start
    /// (ClientPacing.swift).
    var active = ActiveClients()
    var pacedRequests: UInt64 = 0

    var overBudget: Bool { spentNanos >= Self.budgetNanos }

    func spend(_ nanos: UInt64) {
        spentNanos &+= nanos
        if !exhausted && overBudget {
            exhausted = true
            exhaustedTicks &+= 1
        }
    }

    func processedTick(info: NIOEventLoopTickInfo) { endTick() }

    func endTick() {
        tick &+= 1
        spentNanos = 0
        exhausted = false
    }

    /// Runs `body` and counts its time against this tick's budget.
    func charge(_ body: () -> Void) {
        let start = NIODeadline.now().uptimeNanoseconds
        body()
        spend(NIODeadline.now().uptimeNanoseconds &- start)
    }
}

/// The connections that gave way (ClientHandler), taken up again in turn, one quantum each, by
/// a single task per tick while the tick's budget lasts. One task and not one per connection:
/// a hundred tasks each due 20 µs ahead keep falling due while the others run, and the tick
/// would never end. Whoever is taken up first in a run goes on even past the budget, so the
/// connections always make progress. Confined to the loop.
final class ClientTurns: @unchecked Sendable {
    let ticks: LoopTicks
    /// Each connection's rate while others are served (nil: none).
    let pacing: ClientPacing?
    private let loop: EventLoop
    private var waiting = CircularBuffer<() -> Void>()
    private var scheduled = false

    init(ticks: LoopTicks, loop: EventLoop, pacing: ClientPacing? = nil) {
        self.ticks = ticks
        self.loop = loop
        self.pacing = pacing
    }

    var count: Int { waiting.count }

    /// `resume` is called once, in a later tick; a connection that must give way again then
    /// calls `giveWay` again (to the back of the line).
    func giveWay(_ resume: @escaping () -> Void) {
        waiting.append(resume)
        schedule()
    }

    private func schedule() {
        guard !scheduled else { return }
        scheduled = true
        loop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: LoopTicks.yieldDelay) { [self] in run() }
    }

    private func run() {
        scheduled = false
        var first = true
        while !waiting.isEmpty, first || !ticks.overBudget {
            first = false
            let resume = waiting.removeFirst()
            resume()
        }
        if !waiting.isEmpty { schedule() }
    }
}
