//! Headless Chromium (Debian's `chromium`) for the status page's tests:
//! find it, and the DOM of a page after it has run a while.

use std::process::Command;

/// The Chromium binary, or `None` (the caller skips) when it is missing,
/// unless `FERRY_REQUIRE_CHROMIUM` is set (`.ci/run` installs it and sets
/// it): then a missing Chromium fails the test.
pub fn chromium() -> Option<&'static str> {
    let Some(chromium) = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
    else {
        assert!(
            std::env::var_os("FERRY_REQUIRE_CHROMIUM").is_none(),
            "chromium is required"
        );
        eprintln!("skipped: no chromium");
        return None;
    };
    Some(chromium)
}

/// The DOM of `url` after `budget_ms` of the page's (virtual) time, in a
/// fresh profile. Blocks: from async code, in `spawn_blocking`.
pub fn dump_dom(chromium: &str, url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            &format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
