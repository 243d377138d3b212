//! Integration tests: the real binary, real sockets, real processes.

mod util;
mod util_extra;

mod cli;
mod compat01;
mod daemon;
mod end_to_end;
mod robustness;
mod security;
