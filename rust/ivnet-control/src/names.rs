//! Names that become device names and paths: checked wherever they enter (the command line,
//! the environment, a topology file), before anything is built from them.
//!
//! A network is named after its bridge, and its state lives in `<state root>/<bridge>/`, so a
//! bridge name is also a path component. One rule serves both: 1 to 15 ASCII letters, digits,
//! `-`, `_` or `.`, not starting with `.` or `-`. That is a subset of what Linux accepts for a
//! device name (which refuses `/`, whitespace, `.` and `..`), and it can never name a
//! directory other than one directly under the state root.

/// The longest device name Linux accepts (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// Checks `name` as a network device name (a bridge, TAP or uplink). `what` says where the name
/// came from (`"bridge"`, `"IVNET_NETWORK"`, ...) and starts the error message.
pub fn check_ifname(what: &str, name: &str) -> Result<(), String> {
    let why = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name == "." || name == ".." {
        Some("it names a directory, not a network".to_string())
    } else if name.contains('/') {
        Some("it is a path, not a name".to_string())
    } else if name.len() > IFNAME_MAX {
        Some(format!(
            "it has {} characters, at most {IFNAME_MAX} are allowed",
            name.len()
        ))
    } else if name.starts_with('.') || name.starts_with('-') {
        Some("it starts with '.' or '-'".to_string())
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .map(|c| format!("it contains {c:?}"))
    };
    match why {
        None => Ok(()),
        Some(why) => Err(format!(
            "{what} {name:?} is not a valid network device name: {why} (use 1-{IFNAME_MAX} \
             letters, digits, '-', '_' or '.', not starting with '.' or '-')"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_device_names() {
        for n in ["ivbr0", "br-lan", "eth0.100", "a", "x_y", "abcdefghijklmno"] {
            assert_eq!(check_ifname("bridge", n), Ok(()), "{n}");
        }
    }

    #[test]
    fn refuses_paths_and_odd_names() {
        for (n, why) in [
            ("", "empty"),
            (".", "names a directory"),
            ("..", "names a directory"),
            ("/srv", "is a path"),
            ("../etc", "is a path"),
            ("a/b", "is a path"),
            ("abcdefghijklmnop", "16 characters"),
            (".hidden", "starts with"),
            ("-rf", "starts with"),
            ("br 0", "contains ' '"),
            ("br\n0", "contains '\\n'"),
            ("br:0", "contains ':'"),
            ("brü", "contains 'ü'"),
        ] {
            let e = check_ifname("bridge", n).unwrap_err();
            assert!(e.contains(why), "{n:?}: {e}");
            assert!(e.starts_with("bridge "), "{e}");
        }
    }
}
