//! Exit codes and the one-line error report.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | storage or other failure |
//! | 2 | invalid input (arguments, names, JSON, limits) |
//! | 3 | wrong expected version (optimistic concurrency conflict) |
//! | 4 | duplicate event id with different content |
//! | 5 | stream or subscription not found |
//! | 6 | append condition failed (an event matching its query is stored after its `after`) |

use std::process::ExitCode;

use reel_core::ReelError;

/// Exit code for an error, by the first `ReelError` in its chain.
pub fn code_for(error: &anyhow::Error) -> u8 {
    let reel = error.chain().find_map(|e| e.downcast_ref::<ReelError>());
    match reel {
        Some(ReelError::WrongExpectedVersion { .. }) => 3,
        Some(ReelError::DuplicateEventId { .. }) => 4,
        Some(ReelError::StreamNotFound { .. } | ReelError::SubscriptionNotFound { .. }) => 5,
        Some(ReelError::ConditionFailed { .. }) => 6,
        Some(
            ReelError::InvalidStreamName { .. }
            | ReelError::InvalidEvent { .. }
            | ReelError::TooLarge { .. }
            | ReelError::InvalidArgument(_)
            | ReelError::IllegalTransition { .. }
            | ReelError::SchemaTooNew { .. },
        ) => 2,
        Some(
            ReelError::Closed
            | ReelError::Storage { .. }
            | ReelError::LeaseLost { .. }
            | ReelError::SubscriptionChanged { .. }
            | ReelError::SubscriptionFailed { .. }
            | ReelError::TimedOut { .. },
        ) => 1,
        None if error.chain().any(|e| e.downcast_ref::<InvalidInput>().is_some()) => 2,
        None => 1,
    }
}

/// Marks an error as the user's input being wrong (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// Prints `error: …` on one line and returns the exit code.
pub fn report(error: anyhow::Error) -> ExitCode {
    let line = format!("{error:#}").replace('\n', " ");
    eprintln!("error: {line}");
    ExitCode::from(code_for(&error))
}

/// Help and version go to stdout as clap renders them; argument errors become one line
/// (`error: …`) and exit code 2.
pub fn usage(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = error.render().to_string();
    let first = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("error: {first} (see reel --help)");
    ExitCode::from(2)
}
