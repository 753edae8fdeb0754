//! Checks of the binaries' command lines, shared by their tests.
//!
//! Must never: hold a binary's flags or words; only what every command line
//! of the workspace is held to.

/// Every argument of `cmd` and its subcommands that has no help text, as
/// `"<path> --<id>"` (the built-in `help` and `version`, and positional
/// arguments that have help, are fine). A binary's test asserts the list
/// is empty: a flag without help is one an operator has to guess.
#[must_use]
pub fn flags_without_help(cmd: &clap::Command) -> Vec<String> {
    fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in c.get_arguments() {
            let id = a.get_id().as_str();
            if id != "help" && id != "version" && a.get_help().is_none() {
                missing.push(format!("{path} --{id}"));
            }
        }
        for s in c.get_subcommands() {
            walk(s, &format!("{path} {}", s.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(cmd, cmd.get_name(), &mut missing);
    missing
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_flag_without_help_is_named_with_its_subcommand() {
        let cmd = clap::Command::new("tool")
            .arg(clap::Arg::new("quiet").long("quiet").help("Say less."))
            .subcommand(clap::Command::new("run").arg(clap::Arg::new("port").long("port")));
        assert_eq!(super::flags_without_help(&cmd), ["tool run --port"]);
    }
}
