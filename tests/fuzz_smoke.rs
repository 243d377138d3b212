//! The fuzz targets (`fuzz/targets/`) on the stable toolchain: each over
//! its seeds (`fuzz/seeds/<target>/`) and then over generated inputs, random
//! and mutated seeds, within a time budget. Deterministic for a given
//! `FUZZ_SMOKE_SEED`; real fuzzing is `bash fuzz/run.sh` (nightly, cargo-fuzz).

use service_mgr_fuzz_targets as fuzz_targets;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Generated inputs per target, unless the time budget runs out first.
const INPUTS: usize = 20_000;
/// Budget per target: a debug build verifies signatures slowly, and the whole
/// smoke test must stay a few seconds.
const BUDGET: Duration = Duration::from_millis(300);
/// Generated inputs per target however slow the machine.
const MIN_INPUTS: usize = 30;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// xorshift64*: no dependency, and a failure replays from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Tokens the decoders care about, for the mutator to insert.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\x00",
    b"\n",
    b"|",
    b"=",
    b"[Default]",
    b"[[policy]]",
    b"\"cmd\"",
    b"\"uuid\"",
    b"\"auth\"",
    b"\"topic\"",
    b"\"nodes\"",
    b"\"type\":\"agent.hello\"",
    b"!presence/",
    b"smgr1 client ",
    b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    b"==",
    b"\xc3\xa9",
    b"\xe2\x80\xae",
];

fn random_bytes(rng: &mut Rng, out: &mut Vec<u8>) {
    let len = rng.below(64);
    for _ in 0..len {
        if rng.chance(4) {
            out.extend_from_slice(TOKENS[rng.below(TOKENS.len())]);
        } else {
            out.push(rng.next() as u8);
        }
    }
}

/// One input: a seed changed one to four times (bit flip, byte set, insert,
/// delete, truncate, duplicate, splice with another seed), or random bytes.
fn generate(rng: &mut Rng, seeds: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    if seeds.is_empty() || rng.chance(4) {
        random_bytes(rng, out);
        return;
    }
    out.extend_from_slice(&seeds[rng.below(seeds.len())]);
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(8) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = [0, 0xff, 0x7f, 0x80, b'"', b'\\', b'{', b'0'][rng.below(8)];
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, t.iter().copied());
            }
            3 => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            4 => out.truncate(at),
            5 => {
                let end = (at + 1 + rng.below(32)).min(out.len());
                let chunk = out[at.min(end)..end].to_vec();
                out.splice(at..at, chunk);
            }
            _ => {
                // Splice: this input's head, another seed's tail.
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
        }
    }
}

/// Seed files of a target, sorted, with their names.
fn seed_files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed directory {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                data,
            )
        })
        .collect();
    files.sort();
    files
}

/// Run one input; on a panic, describe the target and the input, saved to a
/// file that `cargo fuzz run` replays (and that can become a seed once fixed).
fn run_one(
    name: &str,
    target: fuzz_targets::Target,
    input: &[u8],
    origin: &str,
) -> Result<(), String> {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_ok() {
        return Ok(());
    }
    let file = std::env::temp_dir().join(format!("fuzz-smoke-{name}-crash"));
    let saved = match std::fs::write(&file, input) {
        Ok(()) => format!("saved to {}", file.display()),
        Err(e) => format!("not saved: {e}"),
    };
    let head: String = input
        .iter()
        .take(120)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    Err(format!(
        "fuzz target {name} panicked (message above) on {origin}: {} bytes starting \
         '{head}', {saved}; replay: cargo +nightly fuzz run {name} {}",
        input.len(),
        file.display()
    ))
}

/// Seeds, then generated inputs, until the first failure.
fn run_target(i: usize, name: &str, target: fuzz_targets::Target, seed: u64) -> Result<(), String> {
    let files = seed_files(name);
    for (file, data) in &files {
        run_one(
            name,
            target,
            data,
            &format!("seed file fuzz/seeds/{name}/{file}"),
        )?;
    }
    let seeds: Vec<Vec<u8>> = files.into_iter().map(|(_, d)| d).collect();
    let mut rng = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut input = Vec::new();
    let start = Instant::now();
    let mut n = 0;
    while n < INPUTS && (n < MIN_INPUTS || start.elapsed() < BUDGET) {
        generate(&mut rng, &seeds, &mut input);
        let origin = format!("generated input {n} (FUZZ_SMOKE_SEED={seed})");
        run_one(name, target, &input, &origin)?;
        n += 1;
    }
    eprintln!(
        "fuzz smoke: {name}: {} seeds, {n} generated inputs in {:?}",
        seeds.len(),
        start.elapsed()
    );
    Ok(())
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_generated_inputs() {
    let seed: u64 = std::env::var("FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f022);
    // Every target runs, so that one failure does not hide another.
    let failures: Vec<String> = fuzz_targets::all()
        .iter()
        .enumerate()
        .filter_map(|(i, &(name, target))| run_target(i, name, target, seed).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Each target has its cargo-fuzz binary and its seeds, and nothing else is there.
#[test]
fn fuzz_project_lists_every_target() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let mut names: Vec<&str> = fuzz_targets::all().iter().map(|(n, _)| *n).collect();
    for name in &names {
        let bin = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text =
            std::fs::read_to_string(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(
            text.contains("service_mgr_fuzz_targets::"),
            "{}",
            bin.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "{name} not in fuzz/Cargo.toml"
        );
        assert!(!seed_files(name).is_empty(), "no seeds for {name}");
    }
    names.sort();
    let mut on_disk: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk, names,
        "fuzz/fuzz_targets/ and fuzz_targets::all() differ"
    );
}
