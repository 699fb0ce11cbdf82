//! The command line: bad flags exit 2 with a message naming the problem.

use std::process::Command;

/// Runs the binary with `args`: its exit code and standard error.
pub(crate) fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
        .args(args)
        .env_remove("TICKETRUSH_LOG")
        .output()
        .expect("run ticketrush");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_2_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--sale", "s1:0"], "between 1 and"),
        (&["serve", "--sale", "s1:2000000000"], "between 1 and"),
        (&["serve", "--sale", "no-total"], "ID:TOTAL"),
        (&["serve", "--sale", "bad id:5"], "sale_id"),
        (&["serve", "--listen", "not-an-address"], "--listen"),
        (&["serve", "--batch-size", "0"], "--batch-size"),
        (&["serve", "--log", "[unclosed"], "log filter"),
        (&["serve", "--no-such-flag"], "--no-such-flag"),
        (&["no-such-command"], "no-such-command"),
    ];
    for (args, needle) in cases {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?} should exit 2; stderr: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr should mention {needle:?}: {stderr}"
        );
    }
}

#[test]
fn help_is_there_for_every_subcommand() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["ceiling", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ticketrush"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
}
