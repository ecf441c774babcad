//! The CLI's error: one readable line and an exit code.

use std::process::ExitCode;

/// Exit code for a failure that is not more specific.
const EXIT_FAILURE: u8 = 1;
/// Exit code when no daemon serves the data dir.
const EXIT_NO_DAEMON: u8 = 3;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// No daemon is listening on the data dir's control socket.
    #[error("no daemon running for data dir {0} (start one with `lattice-mount up`)")]
    NoDaemon(String),
    /// The daemon refused the request; its one-line reason.
    #[error("{0}")]
    Refused(String),
    /// Mounting fails or would fail, with the fix.
    #[error(transparent)]
    Mount(#[from] crate::preflight::MountProblem),
    /// Installing or removing the systemd service failed.
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    /// The status page cannot start.
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
    /// Anything else, with its context chain.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::NoDaemon(_) => EXIT_NO_DAEMON,
            CliError::Refused(_)
            | CliError::Mount(_)
            | CliError::Service(_)
            | CliError::Web(_)
            | CliError::Failed(_) => EXIT_FAILURE,
        })
    }

    /// The message as exactly one line (control characters, newlines included, become spaces).
    pub fn one_line(&self) -> String {
        self.to_string()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }
}
