//! Target `cell`: the cell configuration parser, on arbitrary bytes and on generated
//! plausible `key=value` lines.
//!
//! Invariants: no panic; what `parse` returns is valid (unicast non-zero MACs, prefixes
//! 1..=32, a default interface that exists); at most one bad-line report per line; rendering
//! with `Display` and parsing again gives the same configuration with no bad line, and
//! rendering is stable; for generated lines whose values are all well-formed, the result is
//! exactly what the lines say (later lines win) and no line is reported.

use arbitrary::Arbitrary;
use ivnet_core::cell::{netmask, parse, CellConfig, Ipv4, MAX_IFACES};
use ivnet_core::mac::Mac;

/// A key.
#[derive(Arbitrary, Debug, Clone)]
pub enum Key {
    /// `name`.
    Name,
    /// `default`.
    Default,
    /// `if<N>.<field>` with N = x % (MAX_IFACES + 2) (so some do not exist).
    If(u8, Field),
    /// Anything.
    Raw(String),
}

/// A per-interface field.
#[derive(Arbitrary, Debug, Clone)]
pub enum Field {
    /// `mac`.
    Mac,
    /// `ipv4`.
    Ipv4,
    /// `gw`.
    Gw,
    /// Anything.
    Raw(String),
}

/// A value.
#[derive(Arbitrary, Debug, Clone)]
pub enum Value {
    /// A MAC address in the file's notation (maybe multicast or zero).
    Mac([u8; 6]),
    /// An IPv4 address.
    Ip([u8; 4]),
    /// An address with a prefix length (maybe out of range).
    Cidr([u8; 4], u8),
    /// `dhcp`.
    Dhcp,
    /// A number.
    Num(u16),
    /// Anything.
    Raw(String),
}

/// One line of a generated file.
#[derive(Arbitrary, Debug, Clone)]
pub struct Line {
    /// Key.
    pub key: Key,
    /// Value.
    pub value: Value,
    /// Spaces around the key and the value.
    pub spaces: bool,
    /// Followed by a comment line.
    pub comment: bool,
    /// CRLF line ending.
    pub crlf: bool,
}

/// The parser's input.
#[derive(Arbitrary, Debug, Clone)]
pub enum Input {
    /// Arbitrary bytes.
    Bytes(Vec<u8>),
    /// Generated lines.
    Lines(Vec<Line>),
}

fn ip(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// The text of a line and, when every part is well-formed, what it does to the config.
fn render(l: &Line, cfg: &mut Option<CellConfig>) -> String {
    let key = match &l.key {
        Key::Name => "name".to_string(),
        Key::Default => "default".to_string(),
        Key::If(n, f) => {
            let f = match f {
                Field::Mac => "mac",
                Field::Ipv4 => "ipv4",
                Field::Gw => "gw",
                Field::Raw(s) => s.as_str(),
            };
            format!("if{}.{f}", usize::from(*n) % (MAX_IFACES + 2))
        }
        Key::Raw(s) => s.clone(),
    };
    let value = match &l.value {
        Value::Mac(m) => format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        ),
        Value::Ip(a) => ip(*a),
        Value::Cidr(a, p) => format!("{}/{p}", ip(*a)),
        Value::Dhcp => "dhcp".to_string(),
        Value::Num(n) => n.to_string(),
        Value::Raw(s) => s.clone(),
    };
    // The expected effect, when the line is one whose meaning is certain.
    if let Some(c) = cfg.as_mut() {
        let known = match (&l.key, &l.value) {
            (Key::Name, Value::Raw(s)) if s.contains(['\n', '\r']) => false,
            (Key::Name, _) => true,
            (Key::Default, Value::Num(n)) if usize::from(*n) < MAX_IFACES => {
                c.default = Some(usize::from(*n));
                true
            }
            (Key::If(n, f), v) if usize::from(*n) % (MAX_IFACES + 2) < MAX_IFACES => {
                let i = &mut c.ifaces[usize::from(*n) % (MAX_IFACES + 2)];
                match (f, v) {
                    (Field::Mac, Value::Mac(m)) if m[0] & 1 == 0 && *m != [0; 6] => {
                        // The oracle's own rule above; the type must agree with it.
                        i.mac = Some(Mac::new(*m).expect("a unicast, non-zero MAC"));
                        true
                    }
                    (Field::Ipv4, Value::Dhcp) => {
                        i.ipv4 = Some(Ipv4::Dhcp);
                        true
                    }
                    (Field::Ipv4, Value::Cidr(a, p)) if (1..=32).contains(p) => {
                        i.ipv4 = Some(Ipv4::Static(*a, *p));
                        true
                    }
                    (Field::Gw, Value::Ip(a)) => {
                        i.gw = Some(*a);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        if !known {
            *cfg = None;
        }
    }
    let eol = if l.crlf { "\r\n" } else { "\n" };
    let comment = if l.comment { "# a comment\n" } else { "" };
    if l.spaces {
        format!(" {key} = {value} {eol}{comment}")
    } else {
        format!("{key}={value}{eol}{comment}")
    }
}

fn check_valid(c: &CellConfig) {
    for i in &c.ifaces {
        if let Some(m) = i.mac.map(|m| m.octets()) {
            assert!(m[0] & 1 == 0 && m != [0; 6], "invalid MAC accepted: {m:?}");
        }
        if let Some(Ipv4::Static(_, p)) = i.ipv4 {
            assert!((1..=32).contains(&p), "prefix {p} accepted");
            let _ = netmask(p);
        }
    }
    if let Some(d) = c.default {
        assert!(d < MAX_IFACES);
    }
}

/// Runs one input.
pub fn run(input: &Input) {
    let mut expected = None;
    let text: Vec<u8> = match input {
        Input::Bytes(b) => b.clone(),
        Input::Lines(lines) => {
            let mut cfg = Some(CellConfig::default());
            let mut s = String::new();
            for l in lines {
                s.push_str(&render(l, &mut cfg));
            }
            expected = cfg;
            s.into_bytes()
        }
    };
    let lines = text.split(|&b| b == b'\n').count();
    let mut bad = 0usize;
    let c = parse(&text, |_| bad += 1);
    assert!(bad <= lines, "{bad} reports for {lines} lines");
    check_valid(&c);
    if let Some(want) = expected {
        assert_eq!(c, want, "parsed config differs from the lines");
        assert_eq!(bad, 0, "a well-formed line was reported");
    }
    let rendered = c.to_string();
    let mut bad2 = 0usize;
    let again = parse(rendered.as_bytes(), |_| bad2 += 1);
    assert_eq!(again, c, "render -> parse changed the config:\n{rendered}");
    assert_eq!(
        bad2, 0,
        "the renderer wrote a line the parser refuses:\n{rendered}"
    );
    assert_eq!(again.to_string(), rendered, "rendering is not stable");
}
