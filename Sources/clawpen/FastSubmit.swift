import ArgumentParser
import Glibc

/// `clawpen submit` is what an agent's tool loop runs again and again, so its start counts.
/// ArgumentParser builds a command's definitions by reflection before it looks at a word (twice:
/// once to look for a completion-script request), and every generic type it instantiates the
/// first time is a scan of the binary's protocol conformances: parsing `Submit` alone was half
/// of the client's CPU (BENCHMARKS.md, "The CLI as a whole process").
///
/// So the common shapes are parsed here by hand: the options `Submit` declares, each once (the
/// repeatable `--env` as often as given), `--name value` or `--name=value`, the flags alone or as
/// `-it`, then `--` and the command. Anything else — `--help`, a misspelt or repeated option, a
/// value that looks like an option, a check of `Submit.validate()` that fails, no command — takes
/// ArgumentParser's path, so every message and usage line is the one `clawpen submit` always
/// printed. FastSubmitTests holds the two parsers to the same answers.
enum FastSubmit {
    static func run(_ arguments: [String]) {
        guard let parsed = parse(arguments) else { return }
        do {
            try parsed.run()
            exit(0)
        } catch let code as ExitCode {
            // The job's own status (or a refusal's, its message already printed). Not through
            // exit(withError:): for an ExitCode too it builds the help text's generator, by
            // reflection, which cost a streamed submit a third of its CPU.
            exit(code.rawValue)
        } catch {
            Clawpen.exit(withError: error)
        }
    }

    /// The arguments after `submit`, or nil where ArgumentParser must decide.
    static func parse(_ arguments: [String]) -> SubmitArguments? {
        guard let dash = arguments.firstIndex(of: "--"), dash + 1 < arguments.count else { return nil }
        var a = SubmitArguments()
        var seen: Set<String> = []
        var tenant: String?
        var i = 0
        while i < dash {
            let word = arguments[i]
            var name = word
            var inline: String?
            if word.hasPrefix("--"), let eq = word.firstIndex(of: "=") {
                name = String(word[..<eq])
                inline = String(word[word.index(after: eq)...])
            }
            // A value: inline, else the next word, which must not look like an option.
            func value() -> String? {
                if let inline { return inline }
                i += 1
                guard i < dash, !arguments[i].hasPrefix("-") else { return nil }
                return arguments[i]
            }
            if name != "--env" {
                guard seen.insert(name).inserted else { return nil }
            }
            switch name {
            case "--tenant": guard let v = value() else { return nil }; tenant = v
            case "--socket": guard let v = value() else { return nil }; a.socket = v
            case "--timeout":
                guard let v = value(), let seconds = Double(v) else { return nil }
                a.timeout = seconds
            case "--env": guard let v = value() else { return nil }; a.env.append(v)
            case "--cwd": guard let v = value() else { return nil }; a.cwd = v
            case "--stdin-file": guard let v = value() else { return nil }; a.stdinFile = v
            case "--idempotency-key": guard let v = value() else { return nil }; a.idempotencyKey = v
            case "--traceparent": guard let v = value() else { return nil }; a.traceparent = v
            case "-i" where inline == nil: a.interactiveStdin = true
            case "-t" where inline == nil, "--tty" where inline == nil: a.tty = true
            case "-it" where inline == nil, "-ti" where inline == nil:
                a.interactiveStdin = true
                a.tty = true
            case "--detach" where inline == nil: a.detach = true
            case "--json" where inline == nil: a.json = true
            default: return nil
            }
            i += 1
        }
        // -t and --tty are one flag; -it is both -i and -t.
        if (seen.contains("-t") || seen.contains("-it") || seen.contains("-ti")) && seen.contains("--tty") { return nil }
        if seen.contains("-it") || seen.contains("-ti") {
            if seen.contains("-i") || seen.contains("-t") || (seen.contains("-it") && seen.contains("-ti")) { return nil }
        }
        a.tenant = tenant
        a.command = Array(arguments[(dash + 1)...])
        do { try a.validate() } catch { return nil }
        return a
    }
}
