//! `cargo xtask TASK`: the workspace's development tasks (see the library for what they write).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask docs            regenerate man/ and completions/
       cargo xtask man DIR         write the generated man pages to DIR
       cargo xtask completions DIR write the shell completions to DIR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The repository: xtask/ is one level below it.
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned();
    let outcome = match args.as_slice() {
        ["docs"] => xtask::generate("man", &root.join("man"))
            .and_then(|()| xtask::generate("completions", &root.join("completions"))),
        [what @ ("man" | "completions"), dir] => xtask::generate(what, Path::new(dir)),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
