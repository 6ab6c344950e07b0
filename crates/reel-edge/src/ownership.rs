//! Which side writes which stream: ownership instead of conflict resolution.

use reel_core::{ReelError, StreamName};

/// The streams of one device, split by who may write them.
///
/// The device writes `unit-NAME` and `unit-NAME-*` (its events: doors, payments, hardware), and
/// only the device: the central server holds copies that the uplink keeps equal to the device's.
/// The platform writes `unitconfig-NAME` (configuration and commands for the device), and the
/// device only reads it: a local append to it is refused. No stream has two writers, so
/// nothing ever has to be merged, and no clock decides anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    device: String,
}

impl Ownership {
    /// The ownership of device `name`: 1–100 characters of letters, digits, `-` and `_`
    /// (it becomes part of stream names).
    pub fn for_device(name: &str) -> Result<Self, ReelError> {
        reel_core::check_device_name(name)?;
        let ownership = Self { device: name.to_string() };
        // Both names must be valid stream names.
        StreamName::new(ownership.device_stream())?;
        StreamName::new(ownership.config_stream())?;
        Ok(ownership)
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// `unit-NAME`: the device's main stream.
    pub fn device_stream(&self) -> String {
        format!("unit-{}", self.device)
    }

    /// `unitconfig-NAME`: the platform's stream for this device.
    pub fn config_stream(&self) -> String {
        format!("unitconfig-{}", self.device)
    }

    /// Whether the device writes `stream` (`unit-NAME` or `unit-NAME-*`).
    pub fn device_owns(&self, stream: &str) -> bool {
        stream
            .strip_prefix("unit-")
            .and_then(|rest| rest.strip_prefix(self.device.as_str()))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    }

    /// Whether the platform writes `stream` (`unitconfig-NAME`), so the device must not.
    pub fn platform_owns(&self, stream: &str) -> bool {
        stream == self.config_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_owns_its_streams_and_no_one_elses() {
        let owner = Ownership::for_device("PL-1").unwrap();
        assert!(owner.device_owns("unit-PL-1"));
        assert!(owner.device_owns("unit-PL-1-doors"));
        assert!(!owner.device_owns("unit-PL-10"), "a device whose name starts with ours is another device");
        assert!(!owner.device_owns("unit-PL"));
        assert!(!owner.device_owns("unitconfig-PL-1"));
        assert!(owner.platform_owns("unitconfig-PL-1"));
        assert!(!owner.platform_owns("unitconfig-PL-10"));
    }

    #[test]
    fn a_device_name_that_cannot_be_part_of_a_stream_name_is_refused() {
        for bad in ["", "a b", "a/b", "ünit", &"x".repeat(101)] {
            assert!(matches!(Ownership::for_device(bad), Err(ReelError::InvalidArgument(_))), "{bad:?}");
        }
    }
}
