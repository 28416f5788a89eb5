//! Batch parameters as typed arrays, one per column, sent in Postgres's binary format and
//! expanded with `UNNEST($1::uuid[], $2::text[], ...)`: Postgres parses no JSON text for
//! them (the rows' `jsonb` parameter and its `jsonb_to_recordset` were its largest cost
//! in the throughput scenario). JSON columns travel as text elements cast once.
//!
//! Postgres's `text` cannot hold U+0000 (see [`crate::pgtext`]): every text element is
//! passed through [`text`], which replaces it by U+FFFD as the JSON rows did.

use std::borrow::Cow;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::Arguments;

use super::StoreError;

/// Adds `value` as the next parameter of `args`.
pub(crate) fn put<'q, T>(args: &mut PgArguments, value: T) -> Result<(), StoreError>
where
    T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
{
    args.add(value).map_err(StoreError::Bind)
}

/// Adds the column `f` of `rows` as the next parameter: one array element per row.
pub(crate) fn column<'r, R, T>(
    args: &mut PgArguments,
    rows: &'r [R],
    f: impl FnMut(&'r R) -> T,
) -> Result<(), StoreError>
where
    Vec<T>: 'r + sqlx::Encode<'r, Postgres> + sqlx::Type<Postgres>,
{
    put(args, rows.iter().map(f).collect::<Vec<T>>())
}

/// [`column`] for a column whose elements may fail to encode (JSON).
pub(crate) fn try_column<'r, R, T>(
    args: &mut PgArguments,
    rows: &'r [R],
    f: impl FnMut(&'r R) -> Result<T, StoreError>,
) -> Result<(), StoreError>
where
    Vec<T>: 'r + sqlx::Encode<'r, Postgres> + sqlx::Type<Postgres>,
{
    put(args, rows.iter().map(f).collect::<Result<Vec<T>, _>>()?)
}

/// A nullable `jsonb` element (see [`json`]).
pub(crate) fn opt_json<T: Serialize>(value: Option<&T>) -> Result<Option<String>, StoreError> {
    value.map(json).transpose()
}

/// A `text` element: U+0000 replaced by U+FFFD.
pub(crate) fn text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// A nullable `text` element (see [`text`]).
pub(crate) fn opt_text(s: Option<&str>) -> Option<Cow<'_, str>> {
    s.map(text)
}

/// An `int` element. Counts (deliveries, attempts) stay far below `i32::MAX`; one beyond
/// is held at it rather than wrapped negative.
pub(crate) fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A `timestamptz` element rounded to Postgres's microseconds, as Postgres rounded the
/// text of the JSON rows (the binary encoding would truncate).
pub(crate) fn stamp(t: &DateTime<Utc>) -> DateTime<Utc> {
    t.round_subsecs(6)
}

/// The JSON text of a `jsonb` element, strings with U+0000 replaced (`jsonb` refuses the
/// escape).
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    Ok(crate::pgtext::rows_param(value, &[])?)
}

/// A lossless JSON column (see [`crate::pgtext`]): its `jsonb` element, or, when a string
/// in it holds U+0000, its JSON text as the `<field>_text` element.
pub(crate) fn lossless(raw: Option<&RawValue>) -> (Option<&str>, Option<&str>) {
    let Some(raw) = raw.map(RawValue::get) else {
        return (None, None);
    };
    let nul = raw.contains("\\u0000")
        && serde_json::from_str::<serde_json::Value>(raw)
            .map_or(true, |v| crate::pgtext::has_nul(&v));
    if nul {
        (None, Some(raw))
    } else {
        (Some(raw), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_replaces_nul_only_when_present() {
        assert!(matches!(text("plain"), Cow::Borrowed("plain")));
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        assert_eq!(opt_text(None), None);
    }

    #[test]
    fn a_result_with_nul_goes_to_its_text_twin() {
        let with_nul = RawValue::from_string(r#"{"c":"a\u0000b"}"#.into()).unwrap();
        assert_eq!(lossless(Some(&with_nul)), (None, Some(with_nul.get())));
        // An escaped backslash before `u0000` is no NUL.
        let escaped = RawValue::from_string(r#"{"c":"a\\u0000b"}"#.into()).unwrap();
        assert_eq!(lossless(Some(&escaped)), (Some(escaped.get()), None));
        assert_eq!(lossless(None), (None, None));
    }

    #[test]
    fn stamps_round_to_microseconds() {
        let t: DateTime<Utc> = "2026-12-07T03:08:36.123456789Z".parse().unwrap();
        let r: DateTime<Utc> = "2026-12-07T03:08:36.123457Z".parse().unwrap();
        assert_eq!(stamp(&t), r);
    }

    #[test]
    fn json_replaces_nul_in_strings() {
        let v = serde_json::json!({"k": "a\u{0000}b"});
        assert_eq!(json(&v).unwrap(), r#"{"k":"a�b"}"#);
    }
}
