//! Runs subscriber code so that a panic becomes an error message instead of taking the engine down.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::HandlerError;

/// Awaits `future`; an `Err` or a panic comes back as the message to record on the subscription.
pub async fn guarded<F>(future: F) -> Result<(), String>
where
    F: Future<Output = Result<(), HandlerError>>,
{
    match catch_panic(future).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(message) => Err(message),
    }
}

/// Awaits `future`, turning a panic into `Err("panicked: …")`.
pub async fn catch_panic<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future).catch_unwind().await.map_err(|payload| {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("panicked: {text}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_and_panics_become_messages() {
        assert_eq!(guarded(async { Ok(()) }).await, Ok(()));
        assert_eq!(guarded(async { Err("nope".into()) }).await, Err("nope".to_string()));
        let panicking = async {
            if true {
                panic!("handler exploded");
            }
            Ok(())
        };
        assert_eq!(guarded(panicking).await, Err("panicked: handler exploded".to_string()));
    }
}
