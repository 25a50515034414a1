//! UTC calendar dates of Unix times, formatted as Go formats them. Pure
//! arithmetic: no clock is read and no time-zone database is needed.

/// The UTC civil date `(year, month, day)` of Unix time `secs` (Howard
/// Hinnant's days-to-civil algorithm, valid for any day).
fn civil(secs: i64) -> (i64, i64, i64) {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The UTC date of Unix time `secs` as `YYYY-MM-DD`.
///
/// ```
/// assert_eq!(flannel_core::time::utc_date(1_551_052_800), "2019-02-25");
/// ```
pub fn utc_date(secs: i64) -> String {
    let (y, m, d) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Unix time `secs` as RFC 3339 in UTC to the second
/// (`2006-01-02T15:04:05Z`), the way Kubernetes' `metav1.Time` marshals.
///
/// ```
/// assert_eq!(flannel_core::time::rfc3339_utc(1_551_099_845), "2019-02-25T13:04:05Z");
/// ```
pub fn rfc3339_utc(secs: i64) -> String {
    let rem = secs.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        utc_date(secs),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_across_eras_and_leap_days() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(-86_400), "1969-12-31");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
