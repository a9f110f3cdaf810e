/// A FIFO with O(1) append, pop and push to the front (amortized): the router's queues and the
/// tenants' job queues.
public struct RingBuffer<Element> {
    private var items: [Element] = []
    public init() {}
    private var head = 0

    public var count: Int { items.count - head }
    public var isEmpty: Bool { count == 0 }

    mutating func append(_ e: Element) { items.append(e) }

    mutating func pushFront(_ e: Element) {
        if head > 0 { head -= 1; items[head] = e } else { items.insert(e, at: 0) }
    }

    mutating func popFirst() -> Element? {
        guard head < items.count else { return nil }
        let e = items[head]
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: true); head = 0
        } else if head > 1024 && head * 2 > items.count {
            items.removeFirst(head); head = 0
        }
        return e
    }

    /// The first element matching `predicate`, taken out: O(n).
    mutating func remove(where predicate: (Element) -> Bool) -> Element? {
        guard let i = items[head...].firstIndex(where: predicate) else { return nil }
        return items.remove(at: i)
    }

    /// The first element matching `predicate`, left in place: O(n).
    func first(where predicate: (Element) -> Bool) -> Element? { items[head...].first(where: predicate) }

    /// Every element, in order; the buffer is empty afterwards.
    mutating func removeAll() -> [Element] {
        let out = Array(items[head...])
        items.removeAll(); head = 0
        return out
    }
}
