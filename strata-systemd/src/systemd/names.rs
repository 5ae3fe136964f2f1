//! Unit names and their D-Bus object paths (systemd's `bus_label_escape` scheme).

/// Prefix of every unit Strata owns.
pub const UNIT_PREFIX: &str = "strata-";
/// Suffix of every unit Strata owns.
pub const UNIT_SUFFIX: &str = ".service";
/// The pattern handed to `ListUnitsByPatterns`.
pub const UNIT_PATTERN: &str = "strata-*.service";
/// Where systemd publishes unit objects.
pub const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";

/// True for a name Strata may start: `strata-<something>.service`, with only the characters
/// systemd accepts in unit names and at most 255 bytes.
pub fn is_strata_unit(name: &str) -> bool {
    let Some(middle) = name
        .strip_prefix(UNIT_PREFIX)
        .and_then(|rest| rest.strip_suffix(UNIT_SUFFIX))
    else {
        return false;
    };
    !middle.is_empty()
        && name.len() <= 255
        && middle
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:\\@".contains(&b))
}

/// The object path of a unit, as systemd computes it: every byte that is not ASCII alphanumeric
/// becomes `_xx` (lower-case hex).
pub fn unit_object_path(unit: &str) -> String {
    let mut path = String::with_capacity(UNIT_PATH_PREFIX.len() + unit.len() * 2);
    path.push_str(UNIT_PATH_PREFIX);
    if unit.is_empty() {
        path.push('_');
        return path;
    }
    for b in unit.bytes() {
        if b.is_ascii_alphanumeric() {
            path.push(char::from(b));
        } else {
            path.push('_');
            path.push(char::from(HEX[usize::from(b >> 4)]));
            path.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    path
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The unit name encoded in a unit object path, or `None` when the path is not a unit path or
/// its escaping is malformed.
pub fn unit_from_object_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?;
    if label == "_" {
        return Some(String::new());
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hi = hex_val(*bytes.get(i + 1)?)?;
            let lo = hex_val(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_path_round_trips() {
        let path = unit_object_path("strata-web.service");
        assert_eq!(
            path,
            "/org/freedesktop/systemd1/unit/strata_2dweb_2eservice"
        );
        assert_eq!(
            unit_from_object_path(&path).as_deref(),
            Some("strata-web.service")
        );
        assert_eq!(
            unit_from_object_path("/org/freedesktop/systemd1/job/12"),
            None
        );
        assert_eq!(
            unit_from_object_path("/org/freedesktop/systemd1/unit/bad_2"),
            None
        );
    }

    #[test]
    fn strata_unit_names() {
        assert!(is_strata_unit("strata-web.service"));
        assert!(is_strata_unit("strata-a_b.c.service"));
        assert!(!is_strata_unit("strata-.service"));
        assert!(!is_strata_unit("web.service"));
        assert!(!is_strata_unit("strata-web.socket"));
        assert!(!is_strata_unit("strata-w b.service"));
        assert!(!is_strata_unit("strata-w/b.service"));
    }
}
