//! `cairn-maintain`: the one job `main` (`cairn_job::run_main`). Everything else lives in `lib.rs`.

fn main() -> std::process::ExitCode {
    cairn_job::run_main(cairn_maintain::run)
}
