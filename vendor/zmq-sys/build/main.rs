//! service-mgr's copy of zmq-sys 0.12.0: identical except that libzmq is built
//! with CURVE, linked against the static libsodium that libsodium-sys-stable
//! builds from its bundled source (upstream passes `with_libsodium(None)`, which
//! leaves CURVE out), and with the draft socket options (see main). The result:
//! `zmq::has("curve") == Some(true)` and neither libzmq nor libsodium in `ldd`.

fn main() {
    println!("cargo:rerun-if-changed=build/main.rs");
    // Our patched libzmq (cargo sees a path dependency's Rust files only).
    println!("cargo:rerun-if-changed=../zeromq-src/vendor");
    println!("cargo:rerun-if-env-changed=PROFILE");

    // Set by libsodium-sys-stable (`links = "sodium"`) for its direct dependents.
    let lib = std::env::var("DEP_SODIUM_LIB").expect("libsodium-sys-stable sets DEP_SODIUM_LIB");
    let include =
        std::env::var("DEP_SODIUM_INCLUDE").expect("libsodium-sys-stable sets DEP_SODIUM_INCLUDE");
    zeromq_src::Build::new()
        .with_libsodium(Some(zeromq_src::LibLocation::new(lib, include)))
        // Draft options the manager's agent socket needs (ZMQ_ROUTER_NOTIFY,
        // ZMQ_HELLO_MSG): only set through zmq_setsockopt, no API change else.
        .enable_draft(true)
        .build();
}
