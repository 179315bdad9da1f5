//! Running the `cdiphase` binary the way a user does, and checking how it ends.

use std::process::{Command, Output};

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cdiphase"))
}

/// Run `cdiphase ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run cdiphase")
}

/// Its standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `cdiphase ARGS`, which must succeed (the message shows its standard error).
pub fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

/// `cdiphase ARGS`, which must fail with a message and without a panic; returns the
/// standard error.
pub fn fails(args: &[&str]) -> String {
    let o = run(args);
    let e = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail");
    assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
    e
}
