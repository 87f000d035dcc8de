//! Placeholder for zephyr-lang-rust's `zephyr` crate (see `../.cargo/config.toml`).
#![no_std]
compile_error!(
    "the `zephyr` crate is zephyr-lang-rust's: build the driver with west build (the ivnet module's CMake patches it in), or run scripts/clippy-zephyr.sh"
);
