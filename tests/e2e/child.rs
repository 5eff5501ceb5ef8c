//! Running this test binary as a child process that can be killed.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Environment variable naming the child's role; its absence means "not a child".
pub const ROLE_VAR: &str = "TIDAL_E2E_CHILD";
/// Environment variable holding the child's data directory.
pub const DIR_VAR: &str = "TIDAL_E2E_DIR";

/// Spawns this test binary running only the ignored test `name`, with piped stdout.
pub fn spawn(name: &str, role: &str, dir: &Path, extra_env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE_VAR, role)
    .env(DIR_VAR, dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child")
}

/// SIGKILL: no destructors, no flushes — the process just stops.
pub fn kill9(child: &mut Child) {
    // std's kill() sends SIGKILL on Unix.
    let _ = child.kill();
    let _ = child.wait();
}

/// The child's role when running as a child, else `None`.
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}
