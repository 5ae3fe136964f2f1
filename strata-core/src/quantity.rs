//! Strict parsers for the quantities of the manifest: durations, byte sizes and CPU quotas.
//!
//! The syntax follows systemd where systemd has one (binary size suffixes, `CPUQuota=`
//! percentages), but without its leniencies: no whitespace, no fractions where they would be
//! rounded away, no bare numbers whose unit would have to be guessed.

use std::time::Duration;

/// Why a quantity string was rejected. Each message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("empty duration: expected a number with a unit (us, ms, s, m, h, d), e.g. \"250ms\"")]
    EmptyDuration,
    #[error(
        "invalid duration: expected whole numbers each followed by a unit (us, ms, s, m, h, d), e.g. \"250ms\", \"5m\" or \"1h30m\""
    )]
    InvalidDuration,
    #[error("invalid duration: `{number}` has no unit; write e.g. \"{number}s\" or \"{number}ms\"")]
    DurationMissingUnit { number: String },
    #[error("invalid duration: unknown unit `{unit}`; expected one of us, ms, s, m, h, d")]
    DurationUnknownUnit { unit: String },
    #[error(
        "invalid duration: units must go from the largest to the smallest, each at most once (e.g. \"1h30m\")"
    )]
    DurationUnitOrder,
    #[error("duration too large: at most 10000 days")]
    DurationOverflow,
    #[error(
        "invalid size: expected a whole number of bytes with an optional binary suffix K, M, G or T, e.g. \"256M\""
    )]
    InvalidSize,
    #[error(
        "invalid size suffix `{suffix}`: sizes use systemd's binary suffixes; write \"{hint}\""
    )]
    SizeSuffix { suffix: String, hint: String },
    #[error("size too large: at most 16383P bytes")]
    SizeOverflow,
    #[error(
        "invalid CPU quota: expected a percentage of one CPU (\"50%\", \"12.5%\") or a number of CPUs (\"1.5\")"
    )]
    InvalidCpu,
    #[error("CPU quota too precise: at most {max_decimals} decimals")]
    CpuTooPrecise { max_decimals: u32 },
    #[error("CPU quota below 1% of one CPU (the kernel's smallest quota is 1ms per 100ms)")]
    CpuTooSmall,
    #[error("CPU quota above 1024 CPUs")]
    CpuTooLarge,
}

/// The largest accepted duration; beyond it a value is almost certainly a typo.
const MAX_DURATION_SECS: u64 = 10_000 * 86_400;

/// Parses a duration such as `250ms`, `5m`, `1h30m` or `2d`.
///
/// Grammar: one or more `<digits><unit>` components, units `d h m s ms us` in strictly
/// decreasing order, no whitespace, no sign, no fractions.
pub fn parse_duration(text: &str) -> Result<Duration, QuantityError> {
    if text.is_empty() {
        return Err(QuantityError::EmptyDuration);
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut total_us: u128 = 0;
    // Rank of the previous unit; units must strictly decrease.
    let mut last_rank = usize::MAX;
    while i < bytes.len() {
        let num_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == num_start {
            return Err(QuantityError::InvalidDuration);
        }
        let number = &text[num_start..i];
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &text[unit_start..i];
        if unit.is_empty() {
            if i < bytes.len() {
                return Err(QuantityError::InvalidDuration);
            }
            return Err(QuantityError::DurationMissingUnit {
                number: number.to_owned(),
            });
        }
        let (rank, us_per_unit): (usize, u128) = match unit {
            "d" => (0, 86_400_000_000),
            "h" => (1, 3_600_000_000),
            "m" => (2, 60_000_000),
            "s" => (3, 1_000_000),
            "ms" => (4, 1_000),
            "us" => (5, 1),
            _ => {
                return Err(QuantityError::DurationUnknownUnit {
                    unit: unit.to_owned(),
                });
            }
        };
        if last_rank != usize::MAX && rank <= last_rank {
            return Err(QuantityError::DurationUnitOrder);
        }
        last_rank = rank;
        // More than 20 digits cannot fit any sane duration; it also keeps the u128 math safe.
        if number.len() > 20 {
            return Err(QuantityError::DurationOverflow);
        }
        let value: u128 = number
            .parse()
            .map_err(|_| QuantityError::DurationOverflow)?;
        total_us = value
            .checked_mul(us_per_unit)
            .and_then(|v| v.checked_add(total_us))
            .ok_or(QuantityError::DurationOverflow)?;
        if total_us > u128::from(MAX_DURATION_SECS) * 1_000_000 {
            return Err(QuantityError::DurationOverflow);
        }
    }
    let micros = u64::try_from(total_us).map_err(|_| QuantityError::DurationOverflow)?;
    Ok(Duration::from_micros(micros))
}

/// Renders a duration in the grammar [`parse_duration`] accepts (`1h30m`, `250ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut us = d.as_micros();
    if us == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000_000u128),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
        ("us", 1),
    ] {
        if us >= size {
            out.push_str(&(us / size).to_string());
            out.push_str(unit);
            us %= size;
        }
    }
    out
}

/// Parses a byte size such as `512K`, `256M`, `1G` or `1048576`.
///
/// Suffixes are binary (K = 1024), as in systemd's `MemoryMax=`; only upper-case `K M G T P`
/// are accepted, without a trailing `B`.
pub fn parse_size(text: &str) -> Result<u64, QuantityError> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(QuantityError::InvalidSize);
    }
    let shift = match suffix {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        _ => {
            // Recognise the common spellings of other tools and say what systemd calls them.
            let first = suffix.chars().next().map(|c| c.to_ascii_uppercase());
            let rest = suffix.get(1..).unwrap_or("");
            let known_rest = matches!(rest, "" | "B" | "b" | "iB" | "ib" | "i");
            return match first {
                Some(c @ ('K' | 'M' | 'G' | 'T' | 'P')) if known_rest => {
                    Err(QuantityError::SizeSuffix {
                        suffix: suffix.to_owned(),
                        hint: format!("{number}{c}"),
                    })
                }
                Some('B') if rest.is_empty() => Err(QuantityError::SizeSuffix {
                    suffix: suffix.to_owned(),
                    hint: number.to_owned(),
                }),
                _ => Err(QuantityError::InvalidSize),
            };
        }
    };
    if number.len() > 20 {
        return Err(QuantityError::SizeOverflow);
    }
    let value: u64 = number.parse().map_err(|_| QuantityError::SizeOverflow)?;
    value
        .checked_mul(1u64 << shift)
        .ok_or(QuantityError::SizeOverflow)
}

/// Renders a byte count with the largest binary suffix that divides it exactly (`256M`).
pub fn format_size(bytes: u64) -> String {
    for (suffix, shift) in [("P", 50u32), ("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// A CPU quota in microseconds of CPU time per second of wall time
/// (systemd's `CPUQuotaPerSecUSec`): 500000 = half of one CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuQuota {
    pub usec_per_sec: u64,
}

impl CpuQuota {
    /// 1% of one CPU: the kernel's smallest CFS quota is 1 ms per 100 ms period.
    pub const MIN_USEC_PER_SEC: u64 = 10_000;
    /// 1024 CPUs.
    pub const MAX_USEC_PER_SEC: u64 = 1024 * 1_000_000;
}

impl std::fmt::Display for CpuQuota {
    /// Renders as a percentage of one CPU, e.g. `50%` or `12.5%`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = self.usec_per_sec / 10_000;
        let frac = self.usec_per_sec % 10_000;
        if frac == 0 {
            write!(f, "{whole}%")
        } else {
            let digits = format!("{frac:04}");
            write!(f, "{whole}.{}%", digits.trim_end_matches('0'))
        }
    }
}

/// Parses a CPU quota: `50%` / `12.5%` (of one CPU) or `1.5` / `2` (CPUs).
///
/// The text of a TOML integer or float is passed as written, so `cpu = 1.5` parses exactly,
/// without going through a binary float.
pub fn parse_cpu(text: &str) -> Result<CpuQuota, QuantityError> {
    let (number, percent) = match text.strip_suffix('%') {
        Some(n) => (n, true),
        None => (text, false),
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int_part) || frac_part.is_some_and(|f| !all_digits(f)) {
        return Err(QuantityError::InvalidCpu);
    }
    // Percent of one CPU has 10^4 µs/s per unit (4 decimals exact); whole CPUs have 10^6.
    let (scale_decimals, max_decimals) = if percent { (4u32, 4u32) } else { (6, 6) };
    let frac = frac_part.unwrap_or("");
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > max_decimals as usize {
        return Err(QuantityError::CpuTooPrecise { max_decimals });
    }
    if int_part.len() > 12 {
        return Err(QuantityError::CpuTooLarge);
    }
    let whole: u64 = int_part.parse().map_err(|_| QuantityError::CpuTooLarge)?;
    let mut frac_value: u64 = 0;
    if !frac_trimmed.is_empty() {
        frac_value = frac_trimmed
            .parse::<u64>()
            .map_err(|_| QuantityError::InvalidCpu)?;
        frac_value *= 10u64.pow(scale_decimals - frac_trimmed.len() as u32);
    }
    let usec = whole
        .checked_mul(10u64.pow(scale_decimals))
        .and_then(|w| w.checked_add(frac_value))
        .ok_or(QuantityError::CpuTooLarge)?;
    if usec > CpuQuota::MAX_USEC_PER_SEC {
        return Err(QuantityError::CpuTooLarge);
    }
    if usec < CpuQuota::MIN_USEC_PER_SEC {
        return Err(QuantityError::CpuTooSmall);
    }
    Ok(CpuQuota { usec_per_sec: usec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_exactly() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("1d2h3m4s5ms6us").map(|d| d.as_micros()),
            Ok(93_784_005_006)
        );
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("10000d"),
            Ok(Duration::from_secs(MAX_DURATION_SECS))
        );
    }

    #[test]
    fn durations_reject_what_is_ambiguous_or_malformed() {
        assert_eq!(parse_duration(""), Err(QuantityError::EmptyDuration));
        assert_eq!(
            parse_duration("30"),
            Err(QuantityError::DurationMissingUnit {
                number: "30".into()
            })
        );
        assert_eq!(
            parse_duration("1h30"),
            Err(QuantityError::DurationMissingUnit {
                number: "30".into()
            })
        );
        assert_eq!(
            parse_duration("5min"),
            Err(QuantityError::DurationUnknownUnit { unit: "min".into() })
        );
        assert_eq!(
            parse_duration("30m1h"),
            Err(QuantityError::DurationUnitOrder)
        );
        assert_eq!(
            parse_duration("1m1m"),
            Err(QuantityError::DurationUnitOrder)
        );
        for bad in ["1.5s", "-1s", " 1s", "1s ", "1 s", "s", "+1s", "1s-", "１s"] {
            assert_eq!(
                parse_duration(bad),
                Err(QuantityError::InvalidDuration),
                "{bad}"
            );
        }
        assert_eq!(
            parse_duration("10001d"),
            Err(QuantityError::DurationOverflow)
        );
        assert_eq!(
            parse_duration("99999999999999999999999999d"),
            Err(QuantityError::DurationOverflow)
        );
    }

    #[test]
    fn durations_round_trip_through_format() {
        for text in ["250ms", "5m", "1h30m", "1d2h3m4s5ms6us", "0s", "10m", "1us"] {
            let d = parse_duration(text).expect(text);
            assert_eq!(format_duration(d), text);
        }
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(format_size(256 << 20), "256M");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(format_size((1 << 30) + (1 << 20)), "1025M");
    }

    #[test]
    fn sizes_reject_other_spellings_with_a_hint() {
        assert_eq!(
            parse_size("256MB"),
            Err(QuantityError::SizeSuffix {
                suffix: "MB".into(),
                hint: "256M".into()
            })
        );
        assert_eq!(
            parse_size("1GiB"),
            Err(QuantityError::SizeSuffix {
                suffix: "GiB".into(),
                hint: "1G".into()
            })
        );
        assert_eq!(
            parse_size("512k"),
            Err(QuantityError::SizeSuffix {
                suffix: "k".into(),
                hint: "512K".into()
            })
        );
        assert_eq!(
            parse_size("100B"),
            Err(QuantityError::SizeSuffix {
                suffix: "B".into(),
                hint: "100".into()
            })
        );
        for bad in ["", "M", "1.5G", "-1M", " 1M", "1 M", "1X", "0x10"] {
            assert_eq!(parse_size(bad), Err(QuantityError::InvalidSize), "{bad}");
        }
        assert_eq!(parse_size("16384P"), Err(QuantityError::SizeOverflow));
        assert_eq!(
            parse_size("18446744073709551616"),
            Err(QuantityError::SizeOverflow)
        );
    }

    #[test]
    fn cpu_quotas_are_exact() {
        let q = |t: &str| parse_cpu(t).map(|c| c.usec_per_sec);
        assert_eq!(q("50%"), Ok(500_000));
        assert_eq!(q("12.5%"), Ok(125_000));
        assert_eq!(q("1.5"), Ok(1_500_000));
        assert_eq!(q("2"), Ok(2_000_000));
        assert_eq!(q("200%"), Ok(2_000_000));
        assert_eq!(q("1%"), Ok(10_000));
        assert_eq!(q("0.01"), Ok(10_000));
        assert_eq!(q("1.50"), Ok(1_500_000));
        assert_eq!(q("1024"), Ok(1_024_000_000));
        assert_eq!(
            CpuQuota {
                usec_per_sec: 125_000
            }
            .to_string(),
            "12.5%"
        );
        assert_eq!(
            CpuQuota {
                usec_per_sec: 1_500_000
            }
            .to_string(),
            "150%"
        );
    }

    #[test]
    fn cpu_quotas_reject_out_of_range_and_malformed() {
        assert_eq!(parse_cpu("0.5%"), Err(QuantityError::CpuTooSmall));
        assert_eq!(parse_cpu("0"), Err(QuantityError::CpuTooSmall));
        assert_eq!(parse_cpu("1025"), Err(QuantityError::CpuTooLarge));
        assert_eq!(
            parse_cpu("1.0000001"),
            Err(QuantityError::CpuTooPrecise { max_decimals: 6 })
        );
        assert_eq!(
            parse_cpu("1.00001%"),
            Err(QuantityError::CpuTooPrecise { max_decimals: 4 })
        );
        for bad in [
            "", "%", "50 %", "-1", "1e3", ".5", "5.", "50%%", "inf", "nan", "1,5",
        ] {
            assert_eq!(parse_cpu(bad), Err(QuantityError::InvalidCpu), "{bad}");
        }
    }
}
