//! Exit codes of every command, in one place (documented in service-mgr(8)).

/// What a run of `service-mgr` ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done; for the client: every node answered `ok`.
    Ok = 0,
    /// The command itself failed (no daemon answered, bad config, cannot bind, ...).
    Error = 1,
    /// The command line was wrong.
    Usage = 2,
    /// Client: every expected node answered, but some did not succeed
    /// (`failed`, `timeout` or `refused`).
    SomeFailed = 3,
    /// Client: some expected node did not answer (`no_response`), or nobody did.
    NoResponse = 4,
}

/// A command line that is wrong in a way the program found itself (after
/// clap): printed like any error, but the exit status is [`Exit::Usage`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_are_stable() {
        // Scripts depend on these numbers; change them only with the man page.
        assert_eq!(
            [
                Exit::Ok,
                Exit::Error,
                Exit::Usage,
                Exit::SomeFailed,
                Exit::NoResponse
            ]
            .map(|e| e as u8),
            [0, 1, 2, 3, 4]
        );
    }
}
