//! Timestamps on the wire (API.md §Times): UTC RFC 3339, second precision, `Z`.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Formats `t` as `2024-01-01T00:00:00Z`: UTC, fractions dropped.
#[must_use]
pub fn format(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses any RFC 3339 timestamp, whatever its offset.
///
/// # Errors
/// The parse error if `raw` is not RFC 3339.
pub fn parse(raw: &str) -> Result<OffsetDateTime, time::error::Parse> {
    OffsetDateTime::parse(raw, &Rfc3339)
}

/// Drops the sub-second part, as storage keeps whole seconds.
#[must_use]
pub fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_utc_to_the_second() {
        assert_eq!(
            format(datetime!(2024-01-01 0:00:00.999 UTC)),
            "2024-01-01T00:00:00Z"
        );
        assert_eq!(
            format(datetime!(2024-12-31 23:59:59 -01:00)),
            "2025-01-01T00:59:59Z"
        );
    }

    #[test]
    fn parses_any_offset() {
        let t = parse("2024-06-01T12:00:00.5+02:00").unwrap();
        assert_eq!(format(t), "2024-06-01T10:00:00Z");
        assert!(parse("2024-06-01").is_err());
        assert!(parse("yesterday").is_err());
    }
}
