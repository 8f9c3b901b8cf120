//! Names the commit being built, for `keyward_build_info{commit}`: `KEYWARD_BUILD_COMMIT`
//! if set (CI, or a package build without the repository), else `git rev-parse --short
//! HEAD`, else `unknown` (a `cargo install` from a source tarball has no git).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KEYWARD_BUILD_COMMIT");
    let commit = std::env::var("KEYWARD_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KEYWARD_BUILD_COMMIT={}", commit.trim());
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    // Built again when HEAD moves: a commit, a checkout (both write HEAD's log).
    for file in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", file]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(commit)
}
