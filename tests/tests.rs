//! Integration tests: the real binary, real sockets, real processes.

mod util;

mod ack;
mod agent_edges;
mod bench;
mod cli;
mod client_conf;
mod compat01;
mod completion;
mod contrib;
mod daemon;
mod deadline;
mod docs;
mod end_to_end;
mod expected;
mod first_hour;
mod fleet_drop;
mod fuzz_smoke;
mod install;
mod limits;
mod managers;
mod metrics;
mod output;
mod pgkeys;
mod pgstore;
mod protocol;
mod readme;
mod replay;
mod robustness;
mod security;
mod simulate;
mod store;
mod strangers;
mod visibility;
