//! Logging through Zephyr's LOG subsystem (the C shim's `ivnet_log`), formatted in a fixed
//! buffer: no allocation.

use core::fmt::Write;

/// Log levels, as Zephyr numbers them.
#[derive(Clone, Copy)]
#[repr(i32)]
pub enum Level {
    /// LOG_ERR
    Err = 1,
    /// LOG_WRN
    Wrn = 2,
    /// LOG_INF
    Inf = 3,
    /// LOG_DBG
    Dbg = 4,
}

/// Formats and logs one message (truncated to 159 bytes).
pub fn log(level: Level, args: core::fmt::Arguments<'_>) {
    let mut s: heapless::String<160> = heapless::String::new();
    let _ = s.write_fmt(args);
    while s.len() > 159 {
        s.pop();
    }
    let _ = s.push('\0');
    // SAFETY: `s` is NUL-terminated and outlives the call; the shim copies it into the log
    // message before returning.
    unsafe { crate::sys::ivnet_log(level as i32, s.as_ptr().cast()) };
}

macro_rules! err { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Err, format_args!($($t)*)) } }
macro_rules! wrn { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Wrn, format_args!($($t)*)) } }
macro_rules! inf { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Inf, format_args!($($t)*)) } }
macro_rules! dbg { ($($t:tt)*) => { $crate::log::log($crate::log::Level::Dbg, format_args!($($t)*)) } }
pub(crate) use {dbg, err, inf, wrn};
