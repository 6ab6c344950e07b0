//! Validating and answering a batch of appends, the same way on every backend.

use crate::{AppendLimits, AppendRequest, AppendResult, ReelError, MAX_READ_LIMIT};

/// Checks a caller's page size: 1 to [`MAX_READ_LIMIT`].
pub fn check_read_limit(limit: usize) -> Result<(), ReelError> {
    if limit == 0 || limit > MAX_READ_LIMIT {
        return Err(ReelError::InvalidArgument(format!("limit must be between 1 and {MAX_READ_LIMIT}, got {limit}")));
    }
    Ok(())
}

/// `append_many` for a backend: validates each request, submits the valid ones together with
/// `submit`, and answers every request in its original place (invalid ones with their error).
pub async fn append_many_with<F, Fut>(
    limits: &AppendLimits,
    requests: Vec<AppendRequest>,
    submit: F,
) -> Vec<Result<AppendResult, ReelError>>
where
    F: FnOnce(Vec<AppendRequest>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Result<AppendResult, ReelError>>, ReelError>>,
{
    let checks: Vec<Result<(), ReelError>> = requests.iter().map(|r| limits.validate_request(r)).collect();
    let valid: Vec<AppendRequest> =
        requests.into_iter().zip(&checks).filter(|(_, c)| c.is_ok()).map(|(r, _)| r).collect();
    let mut stored = match submit(valid).await {
        Ok(results) => results.into_iter(),
        Err(e) => return checks.iter().map(|_| Err(e.clone())).collect(),
    };
    checks
        .into_iter()
        .map(|check| match check {
            Ok(()) => stored.next().unwrap_or(Err(ReelError::Closed)),
            Err(e) => Err(e),
        })
        .collect()
}
