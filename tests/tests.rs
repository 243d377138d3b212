//! Integration tests: the real binary, real sockets, real processes.

mod util;

mod cli;
mod end_to_end;
mod security;
