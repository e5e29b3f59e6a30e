//! One build-time fact for the end-to-end tests: whether they are built to
//! run as root. The test that fills a 1 MiB tmpfs must mount it, which only
//! root may do; elsewhere it is ignored with that reason rather than
//! passing without testing anything.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(gitpulse_tests_as_root)");
    println!("cargo::rerun-if-changed=build.rs");
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if root {
        println!("cargo::rustc-cfg=gitpulse_tests_as_root");
    }
}
