import ArgumentParser
import Glibc

/// `clawpen submit` is what an agent's tool loop runs again and again, so its start counts: as
/// the root command, ArgumentParser builds every command's definitions (reflection over each
/// one's properties) before it looks at the first word, about a millisecond of a ~2 ms job.
/// Here `Submit` is parsed on its own, which reflects over nothing else. Only a command line
/// that parses cleanly and has a command after `--` goes this way; anything else (`--help`, a
/// misspelt option, a missing command) takes the root command's path, so every message and
/// every usage line is the one `clawpen submit` always printed.
enum FastSubmit {
    static func run(_ arguments: [String]) {
        guard let dash = arguments.firstIndex(of: "--"), dash + 1 < arguments.count,
            !arguments[..<dash].contains(where: { $0 == "-h" || $0 == "--help" || $0 == "help" || $0.hasPrefix("--generate-completion") })
        else { return }
        let command: Submit
        do {
            command = try Submit.parse(arguments)
        } catch {
            return // the root command's parse says what is wrong, as it always did
        }
        var submit = command
        do {
            try submit.run()
            exit(0)
        } catch {
            Clawpen.exit(withError: error)
        }
    }
}
