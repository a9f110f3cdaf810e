/// Frames read from client connections and waiting in their handlers to be taken up, for all
/// connections of the loop together. A connection reads on behind a parse that is off the loop
/// (ClientHandler.readAheadBytes, its own share) only while this total is under `limit`: a
/// thousand connections each sending costly frames could otherwise hold their share each, and
/// frames waiting in a handler are not counted in the clients' reply budgets. Beyond the limit a
/// connection is not read while its parse is away, as before read-ahead: what each holds then is
/// what one read brought. Loop-bound, like the handlers.
final class ReadAhead {
    let limit: Int
    private(set) var held = 0

    init(limit: Int = 16 * 1024 * 1024) { self.limit = limit }

    var hasRoom: Bool { held < limit }

    func add(_ bytes: Int) { held += bytes }
    func remove(_ bytes: Int) { held = max(0, held - bytes) }
}
