//! Small validation helpers shared by the messages' `validate` methods.
//!
//! Each returns [`ProtocolError::Invalid`] naming the field, so a refusal in the logs says
//! exactly which rule a peer broke.

use crate::{Kind, ProtocolError};

/// `value` is finite and `>= 0`.
pub(crate) fn non_negative(kind: Kind, field: &str, value: f64) -> Result<(), ProtocolError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ProtocolError::invalid(
            kind,
            format!("{field} must be finite and >= 0, got {value}"),
        ))
    }
}

/// `value` is finite and `> 0`.
pub(crate) fn positive(kind: Kind, field: &str, value: f64) -> Result<(), ProtocolError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ProtocolError::invalid(
            kind,
            format!("{field} must be finite and > 0, got {value}"),
        ))
    }
}

/// `value` lies in `[0, 1]`.
pub(crate) fn fraction(kind: Kind, field: &str, value: f64) -> Result<(), ProtocolError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ProtocolError::invalid(
            kind,
            format!("{field} must lie in [0, 1], got {value}"),
        ))
    }
}

/// A list holds at most `max` items.
pub(crate) fn max_len(
    kind: Kind,
    field: &str,
    len: usize,
    max: usize,
) -> Result<(), ProtocolError> {
    if len <= max {
        Ok(())
    } else {
        Err(ProtocolError::invalid(
            kind,
            format!("{field} has {len} items, at most {max} allowed"),
        ))
    }
}

/// A text is at most `max` bytes long.
pub(crate) fn max_text(
    kind: Kind,
    field: &str,
    text: &str,
    max: usize,
) -> Result<(), ProtocolError> {
    if text.len() <= max {
        Ok(())
    } else {
        Err(ProtocolError::invalid(
            kind,
            format!("{field} is {} bytes, at most {max} allowed", text.len()),
        ))
    }
}
