//! Timestamps on the wire (API.md §Times): UTC RFC 3339, second precision, `Z`.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Formats `t` as `2024-01-01T00:00:00Z`: UTC, fractions dropped.
#[must_use]
pub fn format(t: OffsetDateTime) -> String {
    let mut buf = [0u8; 20];
    format_into(t, &mut buf).to_owned()
}

/// [`format`] into a caller's buffer, without allocating: it runs for every timestamp
/// of every key listed, so it avoids the `fmt` machinery. Years outside 0..=9999 are
/// clamped (keyward never stores them: expiry is bounded to 100 years ahead).
pub fn format_into(t: OffsetDateTime, buf: &mut [u8; 20]) -> &str {
    let t = t.to_offset(UtcOffset::UTC);
    let year = u32::try_from(t.year().clamp(0, 9999)).unwrap_or(0);
    let two = |n: u8| [b'0' + n / 10, b'0' + n % 10];
    let [y0, y1] = two(u8::try_from(year / 100).unwrap_or(0));
    let [y2, y3] = two(u8::try_from(year % 100).unwrap_or(0));
    let [mo0, mo1] = two(u8::from(t.month()));
    let [d0, d1] = two(t.day());
    let [h0, h1] = two(t.hour());
    let [mi0, mi1] = two(t.minute());
    let [s0, s1] = two(t.second());
    *buf = [
        y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T', h0, h1, b':', mi0, mi1, b':', s0, s1,
        b'Z',
    ];
    // Every byte written above is an ASCII digit or separator.
    std::str::from_utf8(buf).unwrap_or("0000-00-00T00:00:00Z")
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
    fn formatting_matches_the_standard_formatter() {
        for t in [
            datetime!(1970-01-01 0:00 UTC),
            datetime!(2000-02-29 23:59:59 UTC),
            datetime!(2099-12-31 23:59:59.999 UTC),
            datetime!(0999-05-06 07:08:09 UTC),
        ] {
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            assert_eq!(format(t), expected);
        }
    }

    #[test]
    fn parses_any_offset() {
        let t = parse("2024-06-01T12:00:00.5+02:00").unwrap();
        assert_eq!(format(t), "2024-06-01T10:00:00Z");
        assert!(parse("2024-06-01").is_err());
        assert!(parse("yesterday").is_err());
    }
}
