//! The `service-mgr` executable; everything else lives in the library.

fn main() -> std::process::ExitCode {
    service_mgr::cli::main()
}
